namespace Sidecar.Audit;

/// <summary>
/// A sink could not keep a batch at all (its spool is full, the disk write failed, it is shut down and cannot spool):
/// the batch is lost unless the caller records the loss, which is why this is thrown rather than logged.
/// </summary>
/// <remarks>The message names the sink, the sequences and the reason; it never holds configured header values.</remarks>
public sealed class AuditSinkException(string message, Exception? inner = null) : Exception(message, inner);
