namespace Sidecar.Configuration;

/// <summary>
/// <c>admin</c>: the admin API's own listener (approvals, reload, catalogue) and the bearer token every request to it
/// needs. Off unless configured; never served on the agent listener. <see cref="ToString"/> never prints the token.
/// </summary>
public sealed record AdminConfig(string Listen, string Token, SourceLocation Location)
{
    public const string DefaultListen = "127.0.0.1:8788";

    /// <summary>The shortest admin token accepted, in bytes: anything shorter is guessable.</summary>
    public const int MinTokenBytes = 16;

    public override string ToString() => $"admin ({Listen})";
}

/// <summary>
/// <c>approvals</c>: how long a call that needs a person's approval is held open (<see cref="Hold"/>), how many may be
/// pending at once, and the webhook told of each new one.
/// </summary>
public sealed record ApprovalsConfig(TimeSpan Hold, int MaxPending, ApprovalWebhookConfig? Webhook)
{
    /// <summary>30 s: below common MCP client timeouts (60 s and more).</summary>
    public static readonly TimeSpan DefaultHold = TimeSpan.FromSeconds(30);

    public const int DefaultMaxPending = 1000;

    public static ApprovalsConfig Default { get; } = new(DefaultHold, DefaultMaxPending, null);
}

/// <summary>
/// <c>approvals.webhook</c>: each new pending approval is POSTed to <see cref="Url"/> as JSON, signed
/// <c>X-Sidecar-Signature: sha256=HEX</c> (HMAC-SHA256 of the body) when <see cref="HmacKey"/> is set.
/// <see cref="ToString"/> prints neither the headers' values nor the key.
/// </summary>
public sealed record ApprovalWebhookConfig(Uri Url, IReadOnlyDictionary<string, string> Headers, string? HmacKey, TimeSpan Timeout)
{
    public override string ToString() => $"webhook {Url.GetLeftPart(UriPartial.Path)}";
}
