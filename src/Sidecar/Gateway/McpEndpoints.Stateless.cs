using System.Buffers;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Sidecar.Audit;
using Sidecar.Decisions;
using Sidecar.JsonRpc;
using Sidecar.Upstreams;

namespace Sidecar.Gateway;

/// <summary>
/// The stateless era (MCP 2026-07-28) in front of an upstream that speaks it: one self-contained request per POST,
/// no session. The mirrored <c>Mcp-Method</c>/<c>Mcp-Name</c> headers must say what the body says (the decision is
/// always made on the body); the request is decided like any other and passed through.
/// </summary>
internal sealed partial class McpEndpoints
{
    private const int HeaderMismatch = -32020;
    private static readonly string[] s_forwardedHeaders = ["MCP-Protocol-Version", "Mcp-Method", "Mcp-Name"];

    private static async ValueTask<bool> SpeaksStatelessAsync(IStatelessUpstream upstream, CancellationToken cancellationToken)
    {
        try
        {
            return await upstream.SpeaksStatelessAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask HandleStatelessAsync(HttpContext context, ServerRuntime server, IStatelessUpstream upstream,
        ReadOnlySequence<byte> body, JsonRpcScan scan)
    {
        if (scan.Kind != JsonRpcMessageKind.Request)
        {
            await WriteErrorAsync(context, StatusCodes.Status400BadRequest, ErrorCodes.InvalidRequest,
                "Invalid Request: a 2026-07-28 POST carries exactly one request").ConfigureAwait(false);
            return;
        }
        var rawIdToken = body.Slice(scan.Id.Start, scan.Id.Length); // copied only for an answer of the gateway's own
        var headers = new List<KeyValuePair<string, string>>(4);
        if ((CollectMcpHeaders(context.Request, headers) ?? CheckMirroredHeaders(context.Request, body, scan)) is { } mismatch)
        {
            logger.LogWarning("Refused a stateless request to {Server}: {Reason}", server.Name, mismatch);
            await WriteErrorAsync(context, StatusCodes.Status400BadRequest, HeaderMismatch, mismatch, rawIdToken.ToArray()).ConfigureAwait(false);
            return;
        }
        if (scan.Status == ScanStatus.InvalidParams)
        {
            await WriteJsonAsync(context, StatusCodes.Status200OK, JsonRpcResponses.Error(rawIdToken.ToArray(), ErrorCodes.InvalidParams, "Invalid params: " + scan.Error)).ConfigureAwait(false);
            return;
        }

        var decision = default(Decision);
        var decided = false;
        long auditId = 0;
        if (scan.Method == McpMethod.ToolsCall)
        {
            switch (ToolCallPolicy.Decide(server, body, scan, default, rawIdToken, out decision, out var tool, out auditId, out var ticket))
            {
                case ToolCallVerdict.Blocked:
                    // A denial is an answer, not a transport failure: HTTP 200 with the JSON-RPC error.
                    var asResult = server.Options.BlockedCalls == Configuration.BlockedCallStyle.ToolResult;
                    var blocked = JsonRpcResponses.Blocked(rawIdToken.ToArray(), server.Name, tool!, decision, asResult);
                    await server.Audit.WhenWrittenAsync(ticket).ConfigureAwait(false);
                    await WriteJsonAsync(context, StatusCodes.Status200OK, blocked).ConfigureAwait(false);
                    return;
                case ToolCallVerdict.AuditBacklog:
                    await WriteJsonAsync(context, StatusCodes.Status200OK,
                        JsonRpcResponses.AuditBacklog(rawIdToken.ToArray(), server.Name, tool!, server.Audit.RetryAfterMs)).ConfigureAwait(false);
                    return;
            }
            decided = true;
        }

        StatelessExchange exchange;
        try
        {
            exchange = await upstream.SendStatelessAsync(body.ToArray(), headers, context.RequestAborted).ConfigureAwait(false);
        }
        catch (UpstreamException ex)
        {
            long ticket = 0;
            if (decided)
            {
                server.Engine.Refund(ref decision);
                ticket = server.Audit.RecordCompletion(auditId, AuditOutcome.Unavailable, ErrorCodes.UpstreamUnavailable);
            }
            await server.Audit.WhenWrittenAsync(ticket).ConfigureAwait(false);
            await WriteJsonAsync(context, StatusCodes.Status502BadGateway,
                JsonRpcResponses.Error(rawIdToken.ToArray(), ErrorCodes.UpstreamUnavailable, $"Upstream server \"{server.Name}\" is unavailable: {ex.Message}")).ConfigureAwait(false);
            return;
        }

        await using (exchange.ConfigureAwait(false))
        {
            var response = context.Response;
            response.StatusCode = exchange.StatusCode;
            response.ContentType = exchange.IsEventStream ? "text/event-stream" : "application/json";
            if (exchange.IsEventStream)
            {
                response.Headers.CacheControl = "no-cache";
            }
            try
            {
                while (await exchange.ReadAsync(context.RequestAborted).ConfigureAwait(false) is { } message)
                {
                    var outgoing = ReviewStatelessMessage(server, message, rawIdToken, scan.Method, decided, ref decision, ref auditId, out var ticket);
                    if (outgoing is null)
                    {
                        continue;
                    }
                    await server.Audit.WhenWrittenAsync(ticket).ConfigureAwait(false);
                    if (exchange.IsEventStream)
                    {
                        SseWriter.WriteEvent(response.BodyWriter, "message"u8, outgoing.Value.Span);
                    }
                    else
                    {
                        response.BodyWriter.Write(outgoing.Value.Span);
                    }
                    await response.BodyWriter.FlushAsync(context.RequestAborted).ConfigureAwait(false);
                }
            }
            catch (UpstreamException ex)
            {
                logger.LogWarning("Stateless answer from {Server} broke off: {Error}", server.Name, ex.Message);
            }
            finally
            {
                // No answer reached the agent: the stream broke off, or the agent went away.
                server.Audit.RecordCompletion(auditId, context.RequestAborted.IsCancellationRequested ? AuditOutcome.Cancelled : AuditOutcome.Unavailable);
            }
        }
    }

    /// <summary>
    /// Looks at one message of the upstream's answer: invalid ones are dropped, a <c>tools/list</c> result is
    /// filtered through the policy, a failed <c>tools/call</c> gives its tokens back.
    /// </summary>
    private ReadOnlyMemory<byte>? ReviewStatelessMessage(ServerRuntime server, ReadOnlyMemory<byte> message, ReadOnlySequence<byte> rawIdToken, McpMethod method,
        bool decided, ref Decision decision, ref long auditId, out long ticket)
    {
        ticket = 0;
        if (JsonRpcScanner.Scan(message.Span, out var scan, gateway.Options.Scanner) != ScanStatus.Ok)
        {
            logger.LogWarning("Dropped an invalid message from upstream {Server}: {Error}", server.Name, scan.Error);
            return null;
        }
        if (scan.Kind == JsonRpcMessageKind.ErrorResponse && decided)
        {
            server.Engine.Refund(ref decision);
        }
        if (decided && scan.Kind is JsonRpcMessageKind.Response or JsonRpcMessageKind.ErrorResponse)
        {
            ticket = server.Audit.RecordCompletion(auditId, AuditResponses.Classify(message.Span, scan.Kind, out var errorCode), errorCode);
            auditId = 0;
        }
        if (scan.Kind == JsonRpcMessageKind.Response && method == McpMethod.ToolsList)
        {
            try
            {
                return ToolListFilter.Filter(message, server.Policy, rawIdToken.ToArray(), out _) ?? message;
            }
            catch (JsonException)
            {
                return JsonRpcResponses.Error(rawIdToken.ToArray(), ErrorCodes.InternalError, "Internal error: the upstream tools/list response could not be checked");
            }
        }
        return message;
    }

    /// <summary>
    /// One pass over the request headers: the <c>Mcp-*</c> headers to pass upstream (<c>MCP-Protocol-Version</c>,
    /// <c>Mcp-Method</c>, <c>Mcp-Name</c>, <c>Mcp-Param-*</c>) go into <paramref name="forwarded"/>. Returns the
    /// mismatch when an <c>Mcp-*</c> header is sent more than once, else null.
    /// </summary>
    internal static string? CollectMcpHeaders(HttpRequest request, List<KeyValuePair<string, string>> forwarded)
    {
        foreach (var (name, values) in request.Headers)
        {
            if (!name.StartsWith("Mcp-", StringComparison.OrdinalIgnoreCase))
            {
                continue;
            }
            if (values.Count > 1)
            {
                return $"Header mismatch: more than one {name} header";
            }
            if (values.Count == 1 && values[0] is { } value && (IsForwarded(name) || name.StartsWith("Mcp-Param-", StringComparison.OrdinalIgnoreCase)))
            {
                forwarded.Add(new(name, value));
            }
        }
        return null;
    }

    private static bool IsForwarded(string name)
    {
        foreach (var header in s_forwardedHeaders)
        {
            if (header.Equals(name, StringComparison.OrdinalIgnoreCase))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>
    /// The mirrored headers must match the body exactly (after decoding <c>=?base64?…?=</c>): <c>Mcp-Method</c> always,
    /// <c>Mcp-Name</c> for <c>tools/call</c> and <c>prompts/get</c> (<c>params.name</c>) and <c>resources/read</c>
    /// (<c>params.uri</c>). Returns why not, or null. (Repeated headers are refused by <see cref="CollectMcpHeaders"/>.)
    /// Compared with the body's tokens as they are: nothing is allocated unless they differ.
    /// </summary>
    internal static string? CheckMirroredHeaders(HttpRequest request, ReadOnlySequence<byte> body, in JsonRpcScan scan)
    {
        if (Mirror(request, "Mcp-Method", body, scan.MethodName) is { } methodError)
        {
            return methodError;
        }
        var named = scan.Method switch
        {
            McpMethod.ToolsCall or McpMethod.PromptsGet => scan.Name,
            McpMethod.ResourcesRead => scan.Uri,
            _ => default,
        };
        return named.IsEmpty ? null : Mirror(request, "Mcp-Name", body, named);
    }

    private static string? Mirror(HttpRequest request, string header, ReadOnlySequence<byte> body, TokenRange token)
    {
        var values = request.Headers[header];
        if (values.Count == 0)
        {
            return $"Header mismatch: {header} is required and must be \"{UnescapeString(body, token) ?? ""}\"";
        }
        var decoded = DecodeHeaderValue(values[0]!);
        return decoded is not null && TokenEquals(body, token, decoded)
            ? null
            : $"Header mismatch: {header} says \"{decoded}\" but the body says \"{UnescapeString(body, token) ?? ""}\"";
    }

    /// <summary>Whether the string token at <paramref name="token"/> unescapes to <paramref name="expected"/> (an absent token reads as "").</summary>
    private static bool TokenEquals(ReadOnlySequence<byte> body, TokenRange token, string expected)
    {
        if (token.IsEmpty)
        {
            return expected.Length == 0;
        }
        var reader = new Utf8JsonReader(body.Slice(token.Start, token.Length));
        reader.Read();
        return reader.ValueTextEquals(expected);
    }

    /// <summary>Unsafe values travel as <c>=?base64?…?=</c> (UTF-8).</summary>
    internal static string? DecodeHeaderValue(string value)
    {
        if (!value.StartsWith("=?base64?", StringComparison.Ordinal) || !value.EndsWith("?=", StringComparison.Ordinal) || value.Length < 11)
        {
            return value;
        }
        try
        {
            return new UTF8Encoding(false, true).GetString(Convert.FromBase64String(value[9..^2]));
        }
        catch (Exception ex) when (ex is FormatException or DecoderFallbackException)
        {
            return null;
        }
    }

    private static string? UnescapeString(ReadOnlySequence<byte> body, TokenRange token)
    {
        if (token.IsEmpty)
        {
            return null;
        }
        var reader = new Utf8JsonReader(body.Slice(token.Start, token.Length));
        reader.Read();
        return reader.GetString();
    }

    private static async Task WriteJsonAsync(HttpContext context, int status, byte[] body)
    {
        context.Response.StatusCode = status;
        context.Response.ContentType = "application/json";
        await context.Response.BodyWriter.WriteAsync(body, context.RequestAborted).ConfigureAwait(false);
    }
}
