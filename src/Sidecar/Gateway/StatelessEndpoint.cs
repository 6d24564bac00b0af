using System.Buffers;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Sidecar.Audit;
using Sidecar.Decisions;
using Sidecar.Identity;
using Sidecar.JsonRpc;
using Sidecar.Protocol;
using Sidecar.Sessions;
using Sidecar.Upstreams;
using static Sidecar.Gateway.HttpAnswers;

namespace Sidecar.Gateway;

/// <summary>
/// The stateless era (MCP 2026-07-28) in front of an upstream that speaks it: one self-contained request per POST,
/// no session. The mirrored <c>Mcp-Method</c>/<c>Mcp-Name</c> headers must say what the body says (the decision is
/// always made on the body); the request is decided like any other (<see cref="ToolCalls"/>), passed through, and
/// its answer reviewed like a session's (<see cref="Answers"/>).
/// </summary>
internal sealed class StatelessEndpoint(Gateway gateway, ILogger logger)
{
    private SessionEngine Engine => gateway.Engine;

    /// <summary>A POST with <c>MCP-Protocol-Version: 2026-07-28</c>: passed through, or refused when the upstream serves sessions.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask HandleAsync(HttpContext context, GatewaySnapshot snapshot, ServerState server, Caller caller, ReadOnlySequence<byte> body, JsonRpcScan scan)
    {
        if (server.Upstream.Connector is not IStatelessUpstream upstream || !await SpeaksStatelessAsync(upstream, context.RequestAborted).ConfigureAwait(false))
        {
            // This upstream serves the session era: say so the way dual-era clients understand at once (they fall back to initialize).
            var rawId = scan.Kind == JsonRpcMessageKind.Request ? body.Slice(scan.Id.Start, scan.Id.Length).ToArray() : [];
            await WriteJsonAsync(context, JsonRpcResponses.UnsupportedVersion(rawId), StatusCodes.Status400BadRequest).ConfigureAwait(false);
            return;
        }
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
            await WriteErrorAsync(context, StatusCodes.Status400BadRequest, ErrorCodes.HeaderMismatch, mismatch, rawIdToken.ToArray()).ConfigureAwait(false);
            return;
        }
        if (scan.Status == ScanStatus.InvalidParams)
        {
            await WriteJsonAsync(context, JsonRpcResponses.Error(rawIdToken.ToArray(), ErrorCodes.InvalidParams, SessionMessages.InvalidParams(scan.Error))).ConfigureAwait(false);
            return;
        }

        var audit = Engine.Audit;
        var decision = default(Decision);
        long auditId = 0;
        var decided = false;
        if (scan.Method == McpMethod.ToolsCall)
        {
            var callContext = new CallContext(caller.Identity, caller.Grant, null);
            var verdict = Engine.Calls.Decide(server, caller, snapshot.Options, body, scan, callContext, rawIdToken, out decision, out var tool, out auditId, out var ticket);
            if (verdict == CallVerdict.Settle)
            {
                (verdict, decision, auditId, ticket) = await Engine.Calls.SettleAsync(server, caller, body, scan, callContext, rawIdToken.ToArray(), tool!, decision)
                    .ConfigureAwait(false);
            }
            else if (verdict == CallVerdict.Hold)
            {
                // No session to answer later: asked for (or found) at once; the identical retry passes once approved.
                (verdict, decision, auditId, ticket) = await Engine.Calls.AskAsync(Engine.Approvals, server, caller, body, scan, callContext, rawIdToken.ToArray(),
                    tool!, decision).ConfigureAwait(false);
            }
            if (verdict is CallVerdict.Blocked or CallVerdict.AuditBacklog)
            {
                // A denial is an answer, not a transport failure: HTTP 200 with the JSON-RPC error.
                var answer = ToolCalls.Answer(verdict, rawIdToken.ToArray(), server.Name, tool!, decision, snapshot.Options.BlockedCalls, audit.RetryAfterMs);
                await audit.WhenWrittenAsync(ticket).ConfigureAwait(false);
                await WriteJsonAsync(context, answer).ConfigureAwait(false);
                return;
            }
            decided = true;
        }
        var toolListPolicy = scan.Method == McpMethod.ToolsList ? server.PolicyFor(caller) : null;

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
                Engine.Decisions.Refund(ref decision);
                ticket = audit.RecordCompletion(auditId, AuditOutcome.Unavailable, ErrorCodes.UpstreamUnavailable);
            }
            await audit.WhenWrittenAsync(ticket).ConfigureAwait(false);
            await WriteJsonAsync(context, JsonRpcResponses.Error(rawIdToken.ToArray(), ErrorCodes.UpstreamUnavailable, SessionMessages.Unavailable(server.Name, ex.Message)),
                StatusCodes.Status502BadGateway).ConfigureAwait(false);
            return;
        }

        var answered = !decided; // a call's completion is recorded once, by its answer or below
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
                    if (JsonRpcScanner.Scan(message.Span, out var answerScan, snapshot.Options.Scanner) != ScanStatus.Ok)
                    {
                        logger.LogWarning("Dropped an invalid message from upstream {Server}: {Error}", server.Name, answerScan.Error);
                        continue;
                    }
                    var outgoing = message;
                    long ticket = 0;
                    if (answerScan.Kind is JsonRpcMessageKind.Response or JsonRpcMessageKind.ErrorResponse)
                    {
                        if (!answered)
                        {
                            if (answerScan.Kind == JsonRpcMessageKind.ErrorResponse)
                            {
                                Engine.Decisions.Refund(ref decision);
                            }
                            ticket = Answers.Complete(Engine, auditId, message, answerScan);
                            answered = true;
                        }
                        // An id split across body segments is rare (ids are short): only then is it copied.
                        outgoing = Answers.Reshape(Engine, server.Name, toolListPolicy, server.Pins,
                            rawIdToken.IsSingleSegment ? rawIdToken.FirstSpan : rawIdToken.ToArray(), message, answerScan);
                    }
                    await audit.WhenWrittenAsync(ticket).ConfigureAwait(false);
                    if (exchange.IsEventStream)
                    {
                        SseWriter.WriteEvent(response.BodyWriter, "message"u8, outgoing.Span);
                    }
                    else
                    {
                        response.BodyWriter.Write(outgoing.Span);
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
                if (!answered)
                {
                    // No answer reached the agent: the stream broke off, or the agent went away.
                    audit.RecordCompletion(auditId, context.RequestAborted.IsCancellationRequested ? AuditOutcome.Cancelled : AuditOutcome.Unavailable);
                }
            }
        }
    }

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
            if (values.Count == 1 && values[0] is { } value && (IsForwarded(name) || name.StartsWith(McpProtocol.ParamHeaderPrefix, StringComparison.OrdinalIgnoreCase)))
            {
                forwarded.Add(new(name, value));
            }
        }
        return null;
    }

    private static bool IsForwarded(string name)
    {
        foreach (var header in McpProtocol.ForwardedStatelessHeaders)
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
        if (Mirror(request, McpProtocol.MethodHeader, body, scan.MethodName) is { } methodError)
        {
            return methodError;
        }
        var named = scan.Method switch
        {
            McpMethod.ToolsCall or McpMethod.PromptsGet => scan.Name,
            McpMethod.ResourcesRead => scan.Uri,
            _ => default,
        };
        return named.IsEmpty ? null : Mirror(request, McpProtocol.NameHeader, body, named);
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
}
