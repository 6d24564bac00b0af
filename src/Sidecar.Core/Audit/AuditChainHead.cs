namespace Sidecar.Audit;

/// <summary>Where a chain continues from: the last event a previous run wrote (from the audit file).</summary>
/// <param name="Sequence">The last event's sequence number (0 for a new trail).</param>
/// <param name="Hash">The last event's hash (zero for a new trail).</param>
/// <param name="RecoveredBytes">The length of an unterminated last line that was cut off (a crash mid-write).</param>
/// <param name="UncleanStop">
/// The previous run ended without <c>audit_stop</c>: the trail's last event (in the file, or in the newest rotated
/// file when the file is empty) is something else, or an unterminated last line was cut off. False for a new trail.
/// </param>
public readonly record struct AuditChainHead(long Sequence, byte[] Hash, long RecoveredBytes, bool UncleanStop = false)
{
    public static AuditChainHead Empty => new(0, new byte[AuditChain.HashBytes], 0);
}
