using System.Buffers;
using System.Collections.Concurrent;
using System.Text.Json;
using Sidecar.Approvals;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Decisions;
using Sidecar.Identity;
using Sidecar.JsonRpc;
using Sidecar.Protocol;

namespace Sidecar.Sessions;

/// <summary>
/// Calls held for a person's approval (<c>action: require_approval</c> with the admin API on). A held call keeps a
/// copy of its message (the request body goes back to the transport at once) and no in-flight place; it waits up to
/// <c>approvals.hold</c> on its <see cref="Approval"/>, with a <c>notifications/progress</c> every 5 s when the agent
/// gave a progress token, and then is released (forwarded exactly once), refused with -32013 (denied), or answered
/// -32012 (still pending, or expired). Each held call ends in one <c>tool_call</c> audit event with the approval's id.
/// </summary>
internal sealed partial class McpSession
{
    private static readonly long ProgressPeriodMs = 5000;

    /// <summary>The <c>retryAfterMs</c> of a -32012 for an approval still pending when the hold ran out.</summary>
    internal const int PendingRetryAfterMs = 5000;

    private readonly ConcurrentDictionary<RpcId, HeldCall> _held = new();

    /// <summary>Calls waiting for a person's approval now.</summary>
    public override int HeldCount => _held.Count;

    private bool Hold(GatewaySnapshot snapshot, ServerState current, Caller caller, ReadOnlySequence<byte> message, in JsonRpcScan scan,
        RpcId key, byte[] rawId, string tool, in Decision decision, MessageSink sink)
    {
        var copy = message.ToArray();
        var arguments = scan.Arguments.IsEmpty ? ReadOnlySpan<byte>.Empty : copy.AsSpan((int)scan.Arguments.Start, scan.Arguments.Length);
        var context = new CallContext(caller.Identity, caller.Grant, Id);
        var held = new HeldCall(key, rawId, sink, copy, scan, tool, caller, snapshot, current, decision, context);
        if (!CanonicalArguments.TryHash(arguments, out var sha, out var error))
        {
            var refused = decision;
            refused.Outcome = DecisionOutcome.InvalidArguments;
            refused.Reason = SessionMessages.NoCanonicalArguments(error);
            var ticket = _engine.Calls.RecordRefusal(current, caller, context, held.Sequence, scan, rawId, tool, ref refused);
            sink.TryWrite(JsonRpcResponses.Blocked(rawId, current.Name, tool, refused, snapshot.Options.BlockedCalls == BlockedCallStyle.ToolResult), true, ticket);
            return true;
        }
        held.ApprovalKey = new ApprovalKey(current.Name, caller.Identity, caller.Grant, tool, sha);
        held.ProgressToken = scan.Params.IsEmpty ? null : ProgressToken(copy.AsSpan((int)scan.Params.Start, scan.Params.Length));
        try
        {
            held.Cancel = CancellationTokenSource.CreateLinkedTokenSource(_lifetime.Token);
        }
        catch (ObjectDisposedException)
        {
            sink.TryWrite(JsonRpcResponses.Error(rawId, ErrorCodes.UpstreamUnavailable, SessionMessages.SessionClosed), true);
            return true;
        }
        if (!_held.TryAdd(key, held))
        {
            sink.TryWrite(JsonRpcResponses.Error(rawId, ErrorCodes.InvalidRequest, SessionMessages.DuplicateId), true);
            return true;
        }
        sink.MarkHeld();
        _ = RunHeldAsync(held);
        return true;
    }

    private async Task RunHeldAsync(HeldCall held)
    {
        var book = _engine.Approvals;
        var hold = book.Hold;
        var started = Environment.TickCount64;
        var deadline = started + (long)hold.TotalMilliseconds;
        var nextProgress = started + ProgressPeriodMs;
        var progress = 0;
        var token = held.Cancel!.Token;
        try
        {
            while (true)
            {
                var ticket = book.Open(held.ApprovalKey, held.Arguments, held.Decision.ApprovalTimeout, out var approval);
                held.Approval = approval;
                switch (ticket)
                {
                    case ApprovalTicket.Released:
                        await ReleaseAsync(held, approval!).ConfigureAwait(false);
                        return;
                    case ApprovalTicket.Denied:
                        Refuse(held, approval, ApprovalStatus.Denied);
                        return;
                    case ApprovalTicket.Full:
                        Refuse(held, null, ApprovalStatus.None);
                        return;
                }

                while (!approval!.Decided.IsCompleted)
                {
                    var now = Environment.TickCount64;
                    if (now >= deadline)
                    {
                        break;
                    }
                    using (var wake = CancellationTokenSource.CreateLinkedTokenSource(token))
                    {
                        var delay = Task.Delay(TimeSpan.FromMilliseconds(Math.Min(deadline, nextProgress) - now), wake.Token);
                        await Task.WhenAny(approval.Decided, delay).ConfigureAwait(false);
                        await wake.CancelAsync().ConfigureAwait(false); // the timer goes now, not when it would have fired
                    }
                    token.ThrowIfCancellationRequested();
                    now = Environment.TickCount64;
                    if (!approval.Decided.IsCompleted && now >= nextProgress && now < deadline)
                    {
                        SendProgress(held, approval, ++progress, now - started, hold);
                        nextProgress += ProgressPeriodMs;
                    }
                }
                if (!approval.Decided.IsCompleted)
                {
                    Refuse(held, approval, ApprovalStatus.Pending);
                    return;
                }
                switch (approval.Status)
                {
                    case ApprovalStatus.Approved when book.TryUse(approval):
                        await ReleaseAsync(held, approval).ConfigureAwait(false);
                        return;
                    case ApprovalStatus.Denied:
                        book.DeliverDenial(approval);
                        Refuse(held, approval, ApprovalStatus.Denied);
                        return;
                    case ApprovalStatus.Expired:
                        Refuse(held, approval, ApprovalStatus.Expired);
                        return;
                    default:
                        // Approved, but an identical call was released by it first: this one asks again.
                        continue;
                }
            }
        }
        catch (OperationCanceledException) when (token.IsCancellationRequested)
        {
            // The session closed or the agent went away: AbortHeld answered and recorded it.
        }
        catch (Exception ex)
        {
            Log.HeldCallFailed(_server.Name, held.Tool, ex);
            if (held.TryFinish())
            {
                held.Sink.TryWrite(JsonRpcResponses.Error(held.RawId, ErrorCodes.InternalError, "Internal error while the call waited for approval"), true);
            }
        }
        finally
        {
            _held.TryRemove(new KeyValuePair<RpcId, HeldCall>(held.Key, held));
            held.Cancel.Dispose();
        }
    }

    /// <summary>Forwards a held call its approval released: decided again as approved (limits taken now), recorded with the approval's id.</summary>
    private async Task ReleaseAsync(HeldCall held, Approval approval)
    {
        var options = held.Snapshot.Options;
        var (verdict, decision, auditId, ticket) = await _engine.Calls.ReleaseAsync(held.Server, held.Caller, held.Sequence, held.Scan, held.Context,
            held.RawId, held.Tool, approval.Id).ConfigureAwait(false);
        var forwarded = verdict is CallVerdict.Forward or CallVerdict.Shadow;
        if (!held.TryFinish())
        {
            // Aborted meanwhile (the agent went away): the approval covers the next identical call instead.
            if (forwarded)
            {
                _engine.Decisions.Refund(ref decision);
                Audit.RecordCompletion(auditId, AuditOutcome.Cancelled);
            }
            _engine.Approvals.Restore(approval);
            return;
        }
        if (!forwarded)
        {
            _engine.Approvals.Restore(approval);
            held.Sink.TryWrite(ToolCalls.Answer(verdict, held.RawId, held.Server.Name, held.Tool, decision, options.BlockedCalls, Audit.RetryAfterMs), true, ticket);
            return;
        }
        Log.Released(held.Server.Name, held.Tool, approval.Id, Id);
        _held.TryRemove(new KeyValuePair<RpcId, HeldCall>(held.Key, held));
        await SendRequestAsync(held.Snapshot, held.Server, held.Caller, held.Sequence, held.Scan, held.Key, held.RawId, held.Sink, held.Tool,
            hasDecision: true, DecisionEngine.CopyCharges(decision), auditId, System.Diagnostics.Stopwatch.GetTimestamp(), held.Cancel!.Token).ConfigureAwait(false);
    }

    /// <summary>
    /// Ends a held call without making it: -32013 (denied, with the person's reason), -32012 (pending after the hold,
    /// or expired), or -32015 (<see cref="ApprovalStatus.None"/>: <c>approvals.maxPending</c> reached).
    /// </summary>
    private void Refuse(HeldCall held, Approval? approval, ApprovalStatus status)
    {
        if (!held.TryFinish())
        {
            return;
        }
        var decision = held.Decision;
        decision.ApprovalId = approval?.Id;
        decision.ApprovalStatus = status;
        if (status == ApprovalStatus.Pending)
        {
            decision.RetryAfterMs = PendingRetryAfterMs;
        }
        else if (status == ApprovalStatus.Denied)
        {
            decision.Reason = approval!.Reason ?? decision.Reason;
        }
        else if (status == ApprovalStatus.None)
        {
            decision.Reason = SessionMessages.ApprovalsFull(held.Snapshot.Config.Approvals.MaxPending);
        }
        var ticket = _engine.Calls.RecordRefusal(held.Server, held.Caller, held.Context, held.Sequence, held.Scan, held.RawId, held.Tool, ref decision);
        var answer = status == ApprovalStatus.None
            ? JsonRpcResponses.Error(held.RawId, ErrorCodes.Overloaded, $"Tool \"{held.Tool}\" requires approval, but {decision.Reason}")
            : JsonRpcResponses.Blocked(held.RawId, held.Server.Name, held.Tool, decision, held.Snapshot.Options.BlockedCalls == BlockedCallStyle.ToolResult);
        held.Sink.TryWrite(answer, true, ticket);
    }

    /// <summary>
    /// Ends the held calls of <paramref name="sink"/> (the agent went away: nothing to answer) or all of them (the
    /// session is closing: each gets -32016); each is recorded as not made, with <paramref name="message"/> as why. Their
    /// approvals stay: an identical call later finds them.
    /// </summary>
    private void AbortHeld(MessageSink? sink, string message)
    {
        foreach (var (_, held) in _held)
        {
            if ((sink is not null && !ReferenceEquals(held.Sink.Origin, sink)) || !held.TryFinish())
            {
                continue;
            }
            var decision = held.Decision;
            decision.ApprovalId = held.Approval?.Id;
            decision.ApprovalStatus = held.Approval is null ? ApprovalStatus.None : ApprovalStatus.Pending;
            decision.Reason = SessionMessages.HeldCallAborted(message);
            var ticket = _engine.Calls.RecordRefusal(held.Server, held.Caller, held.Context, held.Sequence, held.Scan, held.RawId, held.Tool, ref decision);
            if (sink is null)
            {
                var shutdown = ReferenceEquals(message, SessionMessages.ShuttingDown);
                held.Sink.TryWrite(JsonRpcResponses.Error(held.RawId, ErrorCodes.UpstreamUnavailable,
                    shutdown ? SessionMessages.HeldCallShuttingDown : SessionMessages.HeldCallClosed, shutdown ? SessionMessages.ShuttingDownReason : null), true, ticket);
            }
            try
            {
                held.Cancel?.Cancel();
            }
            catch (ObjectDisposedException)
            {
                // Its task ended meanwhile.
            }
        }
    }

    /// <summary>The gateway begins to drain: calls waiting for a person are answered now (-32016, shutting down).</summary>
    internal override void AbortHeldForShutdown() => AbortHeld(null, SessionMessages.ShuttingDown);

    private static void SendProgress(HeldCall held, Approval approval, int progress, long waitedMs, TimeSpan hold)
    {
        if (held.ProgressToken is { } token && held.Sink.AcceptsRelatedMessages)
        {
            held.Sink.TryWrite(JsonRpcResponses.Progress(token, progress,
                $"Waiting for a person to approve \"{held.Tool}\" (approval {approval.Id}): {waitedMs / 1000} s of {hold.TotalSeconds:0} s"), false);
        }
    }

    /// <summary>The raw <c>params._meta.progressToken</c> (a string or a number), if the agent asked for progress.</summary>
    internal static byte[]? ProgressToken(ReadOnlySpan<byte> parameters)
    {
        var reader = new Utf8JsonReader(parameters);
        try
        {
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                return null;
            }
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                var isMeta = reader.ValueTextEquals("_meta"u8);
                reader.Read();
                if (!isMeta || reader.TokenType != JsonTokenType.StartObject)
                {
                    reader.Skip();
                    continue;
                }
                while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
                {
                    var isToken = reader.ValueTextEquals("progressToken"u8);
                    reader.Read();
                    if (isToken && reader.TokenType is JsonTokenType.String or JsonTokenType.Number)
                    {
                        var start = (int)reader.TokenStartIndex;
                        return parameters[start..(int)reader.BytesConsumed].ToArray();
                    }
                    reader.Skip();
                }
                return null;
            }
        }
        catch (JsonException)
        {
        }
        return null;
    }

    /// <summary>One call waiting for approval, with the copy of its message it will be forwarded from.</summary>
    private sealed class HeldCall(RpcId key, byte[] rawId, MessageSink sink, byte[] message, JsonRpcScan scan, string tool, Caller caller,
        GatewaySnapshot snapshot, ServerState server, Decision decision, CallContext context)
    {
        private int _finished;

        public RpcId Key { get; } = key;
        public byte[] RawId { get; } = rawId;
        public MessageSink Sink { get; } = sink;
        public ReadOnlySequence<byte> Sequence { get; } = new(message);
        public JsonRpcScan Scan = scan;
        public string Tool { get; } = tool;
        public Caller Caller { get; } = caller;
        public GatewaySnapshot Snapshot { get; } = snapshot;
        public ServerState Server { get; } = server;

        /// <summary>The <c>require_approval</c> decision (rule, reason, approval_timeout).</summary>
        public Decision Decision = decision;
        public CallContext Context { get; } = context;

        public ApprovalKey ApprovalKey { get; set; }
        public byte[]? ProgressToken { get; set; }
        public CancellationTokenSource? Cancel { get; set; }
        public Approval? Approval { get; set; }

        /// <summary>The call's arguments object (empty: none).</summary>
        public ReadOnlySpan<byte> Arguments => Scan.Arguments.IsEmpty ? default : Sequence.FirstSpan.Slice((int)Scan.Arguments.Start, Scan.Arguments.Length);

        /// <summary>True for the one path that answers the call.</summary>
        public bool TryFinish() => Interlocked.Exchange(ref _finished, 1) == 0;
    }
}
