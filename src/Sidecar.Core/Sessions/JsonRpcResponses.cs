using Sidecar.Approvals;
using System.Buffers;
using System.Text;
using System.Text.Json;
using Sidecar.Decisions;
using Sidecar.Protocol;

namespace Sidecar.Sessions;

/// <summary>Builds the messages the gateway itself sends: errors, blocked-call answers, re-initialization.</summary>
internal static class JsonRpcResponses
{
    /// <summary>Relaxed escaping: these messages are JSON for MCP clients, never embedded in HTML.</summary>
    internal static readonly JsonWriterOptions s_writerOptions = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary><c>{"jsonrpc":"2.0","id":ID,"error":{"code":C,"message":M}}</c>; a null or empty id is written as <c>null</c>.</summary>
    public static byte[] Error(ReadOnlySpan<byte> rawId, int code, string message) => Error(rawId, code, message, null);

    /// <summary>As above, with <c>error.data.reason</c> when <paramref name="reason"/> is given (<c>"shutting down"</c>).</summary>
    public static byte[] Error(ReadOnlySpan<byte> rawId, int code, string message, string? reason)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var writer = new Utf8JsonWriter(buffer, s_writerOptions))
        {
            StartError(writer, rawId, code, message);
            if (reason is not null)
            {
                writer.WriteStartObject("data"u8);
                writer.WriteString("reason"u8, reason);
                writer.WriteEndObject();
            }
            writer.WriteEndObject();
            writer.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>A <c>notifications/progress</c> for a call held for approval: the agent's token, a count, and what it waits for.</summary>
    public static byte[] Progress(ReadOnlySpan<byte> rawToken, int progress, string message)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var writer = new Utf8JsonWriter(buffer, s_writerOptions))
        {
            writer.WriteStartObject();
            writer.WriteString("jsonrpc"u8, "2.0"u8);
            writer.WriteString("method"u8, "notifications/progress"u8);
            writer.WriteStartObject("params"u8);
            writer.WritePropertyName("progressToken"u8);
            writer.WriteRawValue(rawToken, skipInputValidation: true);
            writer.WriteNumber("progress"u8, progress);
            writer.WriteString("message"u8, message);
            writer.WriteEndObject();
            writer.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>
    /// The answer to a request shed because <c>limits.maxInFlight</c> requests are in flight (built once: its body was
    /// never read, so the id is <c>null</c>): <c>error.data</c> = <c>{"reason":"overloaded","retryAfterMs":1000,"maxInFlight":N}</c>.
    /// </summary>
    public static byte[] Overloaded(int maxInFlight)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var writer = new Utf8JsonWriter(buffer, s_writerOptions))
        {
            StartError(writer, default, ErrorCodes.Overloaded, $"Sidecar is overloaded: {maxInFlight} requests are in flight (limits.maxInFlight); retry later");
            writer.WriteStartObject("data"u8);
            writer.WriteString("reason"u8, "overloaded"u8);
            writer.WriteNumber("retryAfterMs"u8, 1000);
            writer.WriteNumber("maxInFlight"u8, maxInFlight);
            writer.WriteEndObject();
            writer.WriteEndObject();
            writer.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>
    /// The answer to a <c>tools/call</c> refused because its audit record found no room (<c>audit.onFull: shed</c>):
    /// -32015 with <c>error.data</c> = <c>{"tool","server","reason":"audit_backlog","retryAfterMs"}</c>. Nothing was forwarded.
    /// </summary>
    public static byte[] AuditBacklog(ReadOnlySpan<byte> rawId, string server, string tool, int retryAfterMs)
    {
        var buffer = new ArrayBufferWriter<byte>(384);
        using (var writer = new Utf8JsonWriter(buffer, s_writerOptions))
        {
            StartError(writer, rawId, ErrorCodes.Overloaded, $"Tool \"{tool}\" was not called: the audit trail is behind and no call goes unrecorded (audit.onFull: shed); retry in {retryAfterMs} ms");
            writer.WriteStartObject("data"u8);
            writer.WriteString("tool"u8, tool);
            writer.WriteString("server"u8, server);
            writer.WriteString("reason"u8, "audit_backlog"u8);
            writer.WriteNumber("retryAfterMs"u8, retryAfterMs);
            writer.WriteEndObject();
            writer.WriteEndObject();
            writer.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>The answer to a blocked <c>tools/call</c>: a JSON-RPC error with <c>error.data</c>, or an <c>isError</c> tool result.</summary>
    public static byte[] Blocked(ReadOnlySpan<byte> rawId, string server, string tool, in Decision decision, bool asToolResult)
    {
        var message = BlockedMessage(tool, decision);
        var buffer = new ArrayBufferWriter<byte>(512);
        using (var writer = new Utf8JsonWriter(buffer, s_writerOptions))
        {
            writer.WriteStartObject();
            writer.WriteString("jsonrpc"u8, "2.0"u8);
            WriteId(writer, rawId);
            if (asToolResult)
            {
                writer.WriteStartObject("result"u8);
                writer.WriteStartArray("content"u8);
                writer.WriteStartObject();
                writer.WriteString("type"u8, "text"u8);
                writer.WriteString("text"u8, message);
                writer.WriteEndObject();
                writer.WriteEndArray();
                writer.WriteBoolean("isError"u8, true);
                writer.WriteStartObject("_meta"u8);
                writer.WritePropertyName("sidecar/decision"u8);
                WriteData(writer, server, tool, decision, ErrorCodes.For(decision));
                writer.WriteEndObject();
                writer.WriteEndObject();
            }
            else
            {
                writer.WriteStartObject("error"u8);
                writer.WriteNumber("code"u8, ErrorCodes.For(decision));
                writer.WriteString("message"u8, message);
                writer.WritePropertyName("data"u8);
                WriteData(writer, server, tool, decision, null);
                writer.WriteEndObject();
            }
            writer.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    public static string BlockedMessage(string tool, in Decision decision) => decision.Outcome switch
    {
        DecisionOutcome.RateLimited => $"Tool \"{tool}\" is rate limited: {decision.Reason}"
            + (decision.RetryAfterMs >= 0 ? $" (retry in {decision.RetryAfterMs} ms)" : ""),
        DecisionOutcome.RequireApproval => decision.ApprovalStatus switch
        {
            ApprovalStatus.Pending => $"Tool \"{tool}\" requires approval: {decision.Reason}; approval {decision.ApprovalId} is pending: the call was not made. Retry the identical call once it is approved",
            ApprovalStatus.Expired => $"Tool \"{tool}\" requires approval: approval {decision.ApprovalId} expired before anyone decided; the call was not made. An identical call asks again",
            ApprovalStatus.Denied => $"Tool \"{tool}\" was refused by a person (approval {decision.ApprovalId}): {decision.Reason}",
            _ => $"Tool \"{tool}\" requires approval: {decision.Reason}; no approver is configured on this gateway (no admin API), so the call was not made",
        },
        DecisionOutcome.InvalidArguments => $"Tool \"{tool}\" was called with arguments the policy does not accept: {decision.Reason}",
        DecisionOutcome.StoreUnavailable => $"Tool \"{tool}\" was not called: {decision.Reason}",
        _ => $"Tool \"{tool}\" denied by policy: {decision.Reason}",
    };

    private static void WriteData(Utf8JsonWriter writer, string server, string tool, in Decision decision, int? code)
    {
        writer.WriteStartObject();
        if (code is { } c)
        {
            writer.WriteNumber("code"u8, c);
        }
        writer.WriteString("tool"u8, tool);
        writer.WriteString("server"u8, server);
        writer.WriteString("decision"u8, decision.Outcome.ToWireName());
        writer.WriteString("rule"u8, decision.Rule);
        writer.WriteString("reason"u8, decision.Reason);
        if (decision.RetryAfterMs >= 0)
        {
            writer.WriteNumber("retryAfterMs"u8, decision.RetryAfterMs);
        }
        if (decision.Remaining >= 0)
        {
            writer.WriteNumber("remaining"u8, decision.Remaining);
        }
        if (decision.ApprovalId is { } approvalId)
        {
            writer.WriteString("approvalId"u8, approvalId);
            writer.WriteString("status"u8, decision.ApprovalStatus.ToWireName());
        }
        writer.WriteEndObject();
    }

    /// <summary>
    /// The answer to a 2026-07-28 (stateless) request when the upstream serves sessions: -32022 with the versions this
    /// gateway serves, so dual-era clients (the official C# client probes <c>server/discover</c> first) fall back to <c>initialize</c>.
    /// </summary>
    public static byte[] UnsupportedVersion(ReadOnlySpan<byte> rawId)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var writer = new Utf8JsonWriter(buffer, s_writerOptions))
        {
            StartError(writer, rawId, ErrorCodes.UnsupportedProtocolVersion, $"Unsupported protocol version {McpProtocol.V20260728}: this gateway serves MCP sessions (initialize)");
            writer.WriteStartObject("data"u8);
            writer.WriteStartArray("supported"u8);
            foreach (var version in McpProtocol.SessionVersions)
            {
                writer.WriteStringValue(version);
            }
            writer.WriteEndArray();
            writer.WriteString("requested"u8, McpProtocol.V20260728);
            writer.WriteEndObject();
            writer.WriteEndObject();
            writer.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>A request the gateway sends on its own behalf, e.g. re-initializing a respawned upstream.</summary>
    public static byte[] Request(string id, string method, ReadOnlySpan<byte> rawParams)
    {
        var buffer = new ArrayBufferWriter<byte>(rawParams.Length + 96);
        using (var writer = new Utf8JsonWriter(buffer, s_writerOptions))
        {
            writer.WriteStartObject();
            writer.WriteString("jsonrpc"u8, "2.0"u8);
            writer.WriteString("id"u8, id);
            writer.WriteString("method"u8, method);
            if (!rawParams.IsEmpty)
            {
                writer.WritePropertyName("params"u8);
                writer.WriteRawValue(rawParams, skipInputValidation: true);
            }
            writer.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    public static readonly byte[] InitializedNotification = Encoding.UTF8.GetBytes("""{"jsonrpc":"2.0","method":"notifications/initialized"}""");

    /// <summary><c>notifications/cancelled</c> for a request the gateway gave up on.</summary>
    public static byte[] Cancelled(ReadOnlySpan<byte> rawId, string reason)
    {
        var buffer = new ArrayBufferWriter<byte>(128);
        using (var writer = new Utf8JsonWriter(buffer, s_writerOptions))
        {
            writer.WriteStartObject();
            writer.WriteString("jsonrpc"u8, "2.0"u8);
            writer.WriteString("method"u8, "notifications/cancelled"u8);
            writer.WriteStartObject("params"u8);
            writer.WritePropertyName("requestId"u8);
            writer.WriteRawValue(rawId, skipInputValidation: true);
            writer.WriteString("reason"u8, reason);
            writer.WriteEndObject();
            writer.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>Returns <paramref name="message"/> with the id token at <paramref name="idRange"/> replaced by <paramref name="rawId"/>.</summary>
    public static byte[] ReplaceId(ReadOnlySpan<byte> message, int idStart, int idLength, ReadOnlySpan<byte> rawId)
    {
        var result = new byte[message.Length - idLength + rawId.Length];
        message[..idStart].CopyTo(result);
        rawId.CopyTo(result.AsSpan(idStart));
        message[(idStart + idLength)..].CopyTo(result.AsSpan(idStart + rawId.Length));
        return result;
    }

    /// <summary>Writes <c>{"jsonrpc":"2.0","id":ID,"error":{"code":C,"message":M</c>: the caller adds <c>data</c> if any and closes both objects.</summary>
    private static void StartError(Utf8JsonWriter writer, ReadOnlySpan<byte> rawId, int code, string message)
    {
        writer.WriteStartObject();
        writer.WriteString("jsonrpc"u8, "2.0"u8);
        WriteId(writer, rawId);
        writer.WriteStartObject("error"u8);
        writer.WriteNumber("code"u8, code);
        writer.WriteString("message"u8, message);
    }

    private static void WriteId(Utf8JsonWriter writer, ReadOnlySpan<byte> rawId)
    {
        writer.WritePropertyName("id"u8);
        if (rawId.IsEmpty)
        {
            writer.WriteNullValue();
        }
        else
        {
            writer.WriteRawValue(rawId, skipInputValidation: true);
        }
    }
}
