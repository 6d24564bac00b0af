using System.Buffers;
using System.Security.Cryptography;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Sidecar.Audit;
using Sidecar.Configuration;

namespace Sidecar.Approvals;

/// <summary>What one approval covers: exactly one call with these values.</summary>
public readonly record struct ApprovalKey(string Server, string? Identity, string? Grant, string Tool, string ArgumentsSha256);

/// <summary>One request for a person's approval.</summary>
public sealed class Approval
{
    private readonly TaskCompletionSource _decided = new(TaskCreationOptions.RunContinuationsAsynchronously);

    internal Approval(string id, ApprovalKey key, byte[] arguments, DateTimeOffset createdAt, TimeSpan timeout)
    {
        Id = id;
        Key = key;
        Arguments = arguments;
        CreatedAt = createdAt;
        Timeout = timeout;
        ExpiresAt = createdAt + timeout;
    }

    /// <summary>128 random bits, hex.</summary>
    public string Id { get; }

    public ApprovalKey Key { get; }

    /// <summary>The call's arguments as one JSON value, redacted as in the audit trail.</summary>
    public byte[] Arguments { get; }

    public DateTimeOffset CreatedAt { get; }

    /// <summary>The rule's <c>approval_timeout</c>.</summary>
    public TimeSpan Timeout { get; }

    /// <summary>
    /// Pending: when it expires unanswered (<see cref="CreatedAt"/> + <see cref="Timeout"/>). Approved: by when the
    /// call it covers must come (the decision + <see cref="Timeout"/>).
    /// </summary>
    public DateTimeOffset ExpiresAt { get; internal set; }

    public ApprovalStatus Status { get; internal set; } = ApprovalStatus.Pending;

    public DateTimeOffset? DecidedAt { get; internal set; }

    /// <summary>Who decided: the name the admin request gave, <c>admin</c> without one, <c>sidecar</c> for an expiry.</summary>
    public string? DecidedBy { get; internal set; }

    public string? Reason { get; internal set; }

    /// <summary>A denial some call has been told of (a held call, or the next identical call).</summary>
    internal bool DenialDelivered { get; set; }

    /// <summary>Completes when the approval leaves <see cref="ApprovalStatus.Pending"/>.</summary>
    public Task Decided => _decided.Task;

    internal void Signal() => _decided.TrySetResult();
}

/// <summary>What a call that needs approval gets from <see cref="ApprovalBook.Open"/>.</summary>
public enum ApprovalTicket : byte
{
    /// <summary>Wait on <see cref="Approval.Decided"/> (a new approval, or the identical call's pending one).</summary>
    Pending,

    /// <summary>An approval for exactly this call was given and is now used: release the call.</summary>
    Released,

    /// <summary>A person refused the identical call, and this call is the first to hear it: -32013.</summary>
    Denied,

    /// <summary><c>approvals.maxPending</c> approvals are pending: refuse without opening another.</summary>
    Full,
}

/// <summary>The result of approving or denying through the admin API.</summary>
public enum ApprovalDecision : byte { Done, NotFound, Conflict }

/// <summary>
/// The pending approvals, in memory (gone after a restart: the agent's retry opens a new one). One approval per
/// <see cref="ApprovalKey"/> at a time: identical calls wait on the same one; once approved it releases exactly one
/// call, and a second identical call needs a new approval. Decided ones are kept for an hour (at most
/// <see cref="RecentCapacity"/>) for <c>GET /v1/approvals?status=all</c>. Never on the path of an allowed call: only
/// calls whose rule is <c>require_approval</c> come here, at a person's pace, so one lock keeps it simple.
/// </summary>
public sealed partial class ApprovalBook : IAsyncDisposable
{
    public const int RecentCapacity = 1000;
    private static readonly TimeSpan RecentAge = TimeSpan.FromHours(1);

    private readonly Lock _lock = new();
    private readonly Dictionary<string, Approval> _byId = new(StringComparer.Ordinal);
    private readonly Dictionary<ApprovalKey, Approval> _open = new();
    private readonly Queue<Approval> _recent = new();
    private readonly AuditRecorder _audit;
    private readonly AuditRedactor _redactor;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private ApprovalsConfig _config;
    private ApprovalWebhook? _webhook;
    private int _pending;

    public ApprovalBook(ApprovalsConfig config, AuditRecorder audit, AuditRedactor redactor, ILogger logger, TimeProvider? time = null)
    {
        _config = config;
        _audit = audit;
        _redactor = redactor;
        _logger = logger;
        _time = time ?? TimeProvider.System;
        _webhook = config.Webhook is { } webhook ? new ApprovalWebhook(webhook, logger) : null;
    }

    /// <summary>How long a call waits for a person (<c>approvals.hold</c>).</summary>
    public TimeSpan Hold => Volatile.Read(ref _config).Hold;

    /// <summary><c>approvals.maxPending</c>.</summary>
    public int MaxPending => Volatile.Read(ref _config).MaxPending;

    /// <summary>Approvals waiting for a person now.</summary>
    public int PendingCount => Volatile.Read(ref _pending);

    /// <summary>The webhook sender (null: none configured), for its counters.</summary>
    public ApprovalWebhook? Webhook => Volatile.Read(ref _webhook);

    /// <summary>Takes a reloaded <c>approvals</c>: hold and maxPending at once; a changed webhook replaces the sender.</summary>
    public void Configure(ApprovalsConfig config)
    {
        var previous = Interlocked.Exchange(ref _config, config);
        if (previous.Webhook == config.Webhook || (previous.Webhook is { } a && config.Webhook is { } b && SameWebhook(a, b)))
        {
            return;
        }
        var old = Interlocked.Exchange(ref _webhook, config.Webhook is { } webhook ? new ApprovalWebhook(webhook, _logger) : null);
        if (old is not null)
        {
            _ = old.DisposeAsync().AsTask();
        }
    }

    private static bool SameWebhook(ApprovalWebhookConfig a, ApprovalWebhookConfig b)
        => a.Url == b.Url && a.HmacKey == b.HmacKey && a.Timeout == b.Timeout && a.Headers.Count == b.Headers.Count
           && a.Headers.All(h => b.Headers.TryGetValue(h.Key, out var v) && v == h.Value);

    /// <summary>
    /// For a call that needs approval: the approval it waits for (a new one, or the identical call's), or the
    /// approval that now releases it, or the denial it is the first to hear of. <paramref name="arguments"/> is the
    /// call's arguments object (empty: none), used for the admin API's redacted copy of a new approval.
    /// </summary>
    public ApprovalTicket Open(in ApprovalKey key, ReadOnlySpan<byte> arguments, TimeSpan timeout, out Approval? approval)
    {
        var now = _time.GetUtcNow();
        Approval? created = null;
        lock (_lock)
        {
            if (_open.TryGetValue(key, out var current))
            {
                ExpireIfDue(current, now);
                switch (current.Status)
                {
                    case ApprovalStatus.Approved:
                        Use(current);
                        approval = current;
                        return ApprovalTicket.Released;
                    case ApprovalStatus.Denied:
                        current.DenialDelivered = true;
                        _open.Remove(key);
                        approval = current;
                        return ApprovalTicket.Denied;
                    case ApprovalStatus.Pending:
                        approval = current;
                        return ApprovalTicket.Pending;
                }
            }
            if (_pending >= _config.MaxPending)
            {
                approval = null;
                return ApprovalTicket.Full;
            }
            created = new Approval(Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16)), key, Redact(arguments), now, timeout);
            _byId[created.Id] = created;
            _open[key] = created;
            _pending++;
        }
        Log.Requested(_logger, created.Id, key.Server, key.Tool, key.Identity ?? "(anonymous)");
        _audit.Notify(new AuditNotice("approval_requested", json => WriteEventFields(json, created)));
        if (Webhook is { } webhook)
        {
            webhook.Enqueue(ToJson(created));
        }
        approval = created;
        return ApprovalTicket.Pending;
    }

    /// <summary>
    /// A held call woken by its approval being approved: true when this call is the one it releases (it is then
    /// <see cref="ApprovalStatus.Used"/>); false when another identical call took it first.
    /// </summary>
    public bool TryUse(Approval approval)
    {
        lock (_lock)
        {
            ExpireIfDue(approval, _time.GetUtcNow());
            if (approval.Status != ApprovalStatus.Approved)
            {
                return false;
            }
            Use(approval);
            return true;
        }
    }

    /// <summary>
    /// A released call that was then not made (a rate limit refused it, the audit queue had no room): the approval
    /// covers the next identical call again, unless it expired or a newer approval took its place.
    /// </summary>
    public void Restore(Approval approval)
    {
        lock (_lock)
        {
            if (approval.Status == ApprovalStatus.Used && approval.ExpiresAt > _time.GetUtcNow() && !_open.ContainsKey(approval.Key))
            {
                approval.Status = ApprovalStatus.Approved;
                _open[approval.Key] = approval;
            }
        }
    }

    /// <summary>A held call heard of its approval's denial: the next identical call opens a new approval.</summary>
    public void DeliverDenial(Approval approval)
    {
        lock (_lock)
        {
            approval.DenialDelivered = true;
            if (_open.TryGetValue(approval.Key, out var current) && ReferenceEquals(current, approval))
            {
                _open.Remove(approval.Key);
            }
        }
    }

    /// <summary>
    /// A person's decision (<c>POST /v1/approvals/{id}/approve|deny</c>). <see cref="ApprovalDecision.Conflict"/> when
    /// it was decided already or expired; <paramref name="approval"/> is set unless the id is unknown.
    /// </summary>
    public ApprovalDecision Decide(string id, bool approve, string? by, string? reason, out Approval? approval)
        => Decide(id, approve, by, reason, out approval, out _);

    /// <summary>As above; <paramref name="json"/> is the approval as it stood at the decision (its <see cref="WriteJson"/> form).</summary>
    public ApprovalDecision Decide(string id, bool approve, string? by, string? reason, out Approval? approval, out byte[]? json)
    {
        json = null;
        var now = _time.GetUtcNow();
        lock (_lock)
        {
            if (!_byId.TryGetValue(id, out approval))
            {
                return ApprovalDecision.NotFound;
            }
            ExpireIfDue(approval, now);
            if (approval.Status != ApprovalStatus.Pending)
            {
                json = ToJson(approval);
                return ApprovalDecision.Conflict;
            }
            approval.Status = approve ? ApprovalStatus.Approved : ApprovalStatus.Denied;
            approval.DecidedAt = now;
            approval.DecidedBy = string.IsNullOrWhiteSpace(by) ? "admin" : by;
            approval.Reason = string.IsNullOrWhiteSpace(reason) ? (approve ? "approved" : "denied by a person") : reason;
            if (approve)
            {
                // From the decision, the agent has the rule's approval_timeout to send the call it covers.
                approval.ExpiresAt = now + approval.Timeout;
            }
            _pending--;
            Remember(approval);
            // Before any held call hears of it (and uses it): the answer shows the decision itself.
            json = ToJson(approval);
        }
        var decided = approval;
        Log.Decided(_logger, decided.Id, decided.Status.ToWireName(), decided.DecidedBy!, decided.Key.Server, decided.Key.Tool);
        _audit.Notify(new AuditNotice(approve ? "approval_granted" : "approval_denied", json => WriteEventFields(json, decided)));
        decided.Signal();
        return ApprovalDecision.Done;
    }

    /// <summary>Expires what is past its time (pending ones, and approvals nobody used); forgets old decided ones. Cheap when there are none.</summary>
    public void Sweep()
    {
        if (Volatile.Read(ref _pending) == 0 && _open.Count == 0 && _recent.Count == 0)
        {
            return;
        }
        var now = _time.GetUtcNow();
        lock (_lock)
        {
            List<Approval>? due = null;
            foreach (var (_, approval) in _open)
            {
                if (approval.ExpiresAt <= now)
                {
                    (due ??= []).Add(approval);
                }
            }
            foreach (var approval in due ?? [])
            {
                ExpireIfDue(approval, now);
            }
            while (_recent.TryPeek(out var oldest) && (_recent.Count > RecentCapacity || now - (oldest.DecidedAt ?? oldest.CreatedAt) > RecentAge))
            {
                _recent.Dequeue();
                _byId.Remove(oldest.Id);
            }
        }
    }

    /// <summary>Pending approvals, oldest first; with <paramref name="all"/>, the recent decided ones too.</summary>
    public List<Approval> List(bool all)
    {
        Sweep();
        lock (_lock)
        {
            var list = new List<Approval>(_byId.Count);
            foreach (var (_, approval) in _byId)
            {
                if (all || approval.Status == ApprovalStatus.Pending)
                {
                    list.Add(approval);
                }
            }
            list.Sort(static (a, b) => a.CreatedAt.CompareTo(b.CreatedAt));
            return list;
        }
    }

    public Approval? Find(string id)
    {
        lock (_lock)
        {
            return _byId.GetValueOrDefault(id);
        }
    }

    /// <summary>
    /// An approval as the admin API and the webhook show it: <c>id, server, tool, identity, grant, arguments,
    /// argumentsSha256, createdAt, expiresAt, status</c>, and once decided <c>decidedAt, decidedBy, reason</c>.
    /// </summary>
    public static void WriteJson(Utf8JsonWriter json, Approval approval)
    {
        json.WriteStartObject();
        json.WriteString("id"u8, approval.Id);
        json.WriteString("server"u8, approval.Key.Server);
        json.WriteString("tool"u8, approval.Key.Tool);
        json.WriteString("identity"u8, approval.Key.Identity);
        json.WriteString("grant"u8, approval.Key.Grant);
        json.WritePropertyName("arguments"u8);
        json.WriteRawValue(approval.Arguments, skipInputValidation: true);
        json.WriteString("argumentsSha256"u8, approval.Key.ArgumentsSha256);
        json.WriteString("createdAt"u8, approval.CreatedAt);
        json.WriteString("expiresAt"u8, approval.ExpiresAt);
        json.WriteString("status"u8, approval.Status.ToWireName());
        if (approval.DecidedAt is { } decidedAt)
        {
            json.WriteString("decidedAt"u8, decidedAt);
            json.WriteString("decidedBy"u8, approval.DecidedBy);
            json.WriteString("reason"u8, approval.Reason);
        }
        json.WriteEndObject();
    }

    /// <summary>An approval in its <see cref="WriteJson"/> form.</summary>
    public static byte[] ToJson(Approval approval)
    {
        var buffer = new ArrayBufferWriter<byte>(512);
        using (var json = new Utf8JsonWriter(buffer))
        {
            WriteJson(json, approval);
        }
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>The fields of an approval's audit event: the approval, who decided and why.</summary>
    private static void WriteEventFields(Utf8JsonWriter json, Approval approval)
    {
        json.WriteString("approvalId"u8, approval.Id);
        json.WriteString("server"u8, approval.Key.Server);
        json.WriteString("tool"u8, approval.Key.Tool);
        json.WriteString("identity"u8, approval.Key.Identity);
        json.WriteString("grant"u8, approval.Key.Grant);
        json.WriteString("argumentsSha256"u8, approval.Key.ArgumentsSha256);
        json.WriteString("status"u8, approval.Status.ToWireName());
        json.WriteString("expiresAt"u8, approval.ExpiresAt);
        if (approval.DecidedAt is not null)
        {
            json.WriteString("decidedBy"u8, approval.DecidedBy);
            json.WriteString("reason"u8, approval.Reason);
        }
    }

    private void Use(Approval approval)
    {
        approval.Status = ApprovalStatus.Used;
        _open.Remove(approval.Key);
    }

    /// <summary>Under the lock: a pending approval past its time, or an approved one nobody used in time, expires.</summary>
    private void ExpireIfDue(Approval approval, DateTimeOffset now)
    {
        if (approval.Status is not (ApprovalStatus.Pending or ApprovalStatus.Approved) || approval.ExpiresAt > now)
        {
            return;
        }
        var wasPending = approval.Status == ApprovalStatus.Pending;
        approval.Status = ApprovalStatus.Expired;
        if (wasPending)
        {
            _pending--;
            approval.DecidedAt = now;
            approval.DecidedBy = "sidecar";
            approval.Reason = $"nobody decided within approval_timeout ({approval.Timeout.TotalSeconds:0.###} s)";
            Remember(approval);
        }
        else
        {
            approval.Reason = $"approved, but the call it covers did not come within approval_timeout ({approval.Timeout.TotalSeconds:0.###} s)";
        }
        if (_open.TryGetValue(approval.Key, out var current) && ReferenceEquals(current, approval))
        {
            _open.Remove(approval.Key);
        }
        var expired = approval;
        Log.Expired(_logger, expired.Id, expired.Key.Server, expired.Key.Tool);
        _audit.Notify(new AuditNotice("approval_expired", json => WriteEventFields(json, expired)));
        expired.Signal();
    }

    private void Remember(Approval approval) => _recent.Enqueue(approval);

    /// <summary>The arguments as one JSON value, redacted and cut as in the audit trail.</summary>
    private byte[] Redact(ReadOnlySpan<byte> arguments)
    {
        var buffer = new ArrayBufferWriter<byte>(Math.Min(arguments.Length + 32, 64 * 1024));
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            _redactor.WriteArguments(json, arguments, complete: true);
            json.WriteEndObject();
        }
        // {"arguments":VALUE} → VALUE
        var written = buffer.WrittenSpan;
        return written["{\"arguments\":".Length..^1].ToArray();
    }

    public ValueTask DisposeAsync() => Interlocked.Exchange(ref _webhook, null) is { } webhook ? webhook.DisposeAsync() : ValueTask.CompletedTask;

    private static partial class Log
    {
        [LoggerMessage(Level = LogLevel.Information, Message = "Approval {Id} requested: {Server}/{Tool} for {Identity}")]
        public static partial void Requested(ILogger logger, string id, string server, string tool, string identity);

        [LoggerMessage(Level = LogLevel.Information, Message = "Approval {Id} {Status} by {By}: {Server}/{Tool}")]
        public static partial void Decided(ILogger logger, string id, string status, string by, string server, string tool);

        [LoggerMessage(Level = LogLevel.Information, Message = "Approval {Id} expired: {Server}/{Tool}")]
        public static partial void Expired(ILogger logger, string id, string server, string tool);
    }
}
