using System.Buffers;
using System.Runtime.CompilerServices;
using Microsoft.AspNetCore.Http;
using Sidecar.Identity;
using Sidecar.JsonRpc;
using Sidecar.Protocol;
using Sidecar.Sessions;
using Sidecar.Upstreams;
using static Sidecar.Gateway.HttpAnswers;

namespace Sidecar.Gateway;

/// <summary>
/// Streamable HTTP (<c>POST|GET|DELETE /servers/{name}/mcp</c>) over the session engine: headers and status codes
/// here, MCP in <see cref="SessionEngine"/> and the sessions (<see cref="McpSession"/>, <see cref="AggregateSession"/> for <c>/mcp</c>). A 2026-07-28 POST to an upstream that
/// speaks it goes to <see cref="StatelessEndpoint"/>.
/// </summary>
internal sealed class StreamableHttpEndpoint(Gateway gateway, StatelessEndpoint stateless)
{
    private SessionEngine Engine => gateway.Engine;

    /// <summary>
    /// A POST. The checks before the body and the body itself (which came with the headers, usually) are taken
    /// synchronously; the rest runs as one pooled state machine (<see cref="HandlePostAsync"/>).
    /// </summary>
    public Task PostAsync(HttpContext context)
    {
        if (HttpGuards.Resolve(context, gateway, out var snapshot, out var caller, out var refused) is not { } target)
        {
            return WriteErrorAsync(context, refused.Status, refused.Code, refused.Message);
        }
        if (Engine.Draining)
        {
            return WriteDrainingAsync(context);
        }
        var request = context.Request;
        if (!HttpGuards.Accepts(request, "application/json") || !HttpGuards.Accepts(request, "text/event-stream"))
        {
            return WriteErrorAsync(context, StatusCodes.Status406NotAcceptable, ErrorCodes.ServerError,
                "Not Acceptable: the client must accept both application/json and text/event-stream");
        }
        if (!Engine.InFlight.TryEnter())
        {
            return WriteOverloadedAsync(context, gateway.OverloadedResponse);
        }
        // ReadBodyAsync reports a failure in its result, never by throwing here; PostAfterReadAsync gives the place back.
        var read = HttpGuards.ReadBodyAsync(context, snapshot.Options.Limits.MaxMessageBytes);
        if (!read.IsCompletedSuccessfully)
        {
            return AsTask(PostAfterReadAsync(context, snapshot, target, caller, read));
        }
        return AsTask(HandlePostAsync(context, snapshot, target, caller, read.GetAwaiter().GetResult())); // leaves the gate when done
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask PostAfterReadAsync(HttpContext context, GatewaySnapshot snapshot, SessionTarget target, Caller caller, ValueTask<HttpGuards.Body> read)
    {
        HttpGuards.Body body;
        try
        {
            body = await read.ConfigureAwait(false);
        }
        catch
        {
            Engine.InFlight.Exit();
            throw;
        }
        await HandlePostAsync(context, snapshot, target, caller, body).ConfigureAwait(false);
    }

    /// <summary>
    /// Handles a POST whose body has been read; whatever happens, gives the body back to Kestrel and the place taken
    /// in <see cref="SessionEngine.InFlight"/> back to the gate.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask HandlePostAsync(HttpContext context, GatewaySnapshot snapshot, SessionTarget target, Caller caller, HttpGuards.Body read)
    {
        if (read.Error is not null)
        {
            Engine.InFlight.Exit();
            await WriteErrorAsync(context, read.Status, read.Code, read.Error).ConfigureAwait(false);
            return;
        }
        var body = read.Buffer;
        var holding = false;
        try
        {
            if (SessionEngine.Check(body, snapshot.Options, out var scan) is { } refusal)
            {
                await WriteRefusalAsync(context, refusal).ConfigureAwait(false);
                return;
            }
            var request = context.Request;
            var version = request.Headers[McpProtocol.ProtocolVersionHeader];
            if (version.Count == 1 && version[0] == McpProtocol.V20260728)
            {
                if (target.Server is { } statelessServer)
                {
                    await stateless.HandleAsync(context, snapshot, statelessServer, caller, body, scan).ConfigureAwait(false);
                }
                else
                {
                    // The aggregated endpoint serves sessions only: -32022 lets a dual-era client fall back to initialize.
                    var rawId = scan.Kind == JsonRpcMessageKind.Request ? body.Slice(scan.Id.Start, scan.Id.Length).ToArray() : [];
                    await WriteJsonAsync(context, JsonRpcResponses.UnsupportedVersion(rawId), StatusCodes.Status400BadRequest).ConfigureAwait(false);
                }
                return;
            }
            if (HttpGuards.CheckProtocolVersion(request) is { } versionError)
            {
                await WriteErrorAsync(context, StatusCodes.Status400BadRequest, ErrorCodes.ServerError, versionError).ConfigureAwait(false);
                return;
            }
            var sessionIds = request.Headers[McpProtocol.SessionIdHeader];
            if (sessionIds.Count > 1)
            {
                await WriteErrorAsync(context, StatusCodes.Status400BadRequest, ErrorCodes.ServerError, "Bad Request: more than one Mcp-Session-Id header").ConfigureAwait(false);
                return;
            }

            AgentSession? session;
            var isInitialize = scan.Kind == JsonRpcMessageKind.Request && scan.Method == McpMethod.Initialize;
            if (isInitialize)
            {
                if (sessionIds.Count == 1)
                {
                    await WriteErrorAsync(context, StatusCodes.Status400BadRequest, ErrorCodes.InvalidRequest, SessionMessages.InitializeWithSession).ConfigureAwait(false);
                    return;
                }
                var opened = Engine.TryOpen(snapshot, target, SessionTransport.StreamableHttp, out session, caller);
                if (opened != SessionOpen.Opened)
                {
                    await WriteSessionsFullAsync(context, opened, snapshot, target.Server).ConfigureAwait(false);
                    return;
                }
            }
            else if (sessionIds.Count == 0)
            {
                var discover = scan.Kind == JsonRpcMessageKind.Request && scan.Method == McpMethod.ServerDiscover;
                var message = discover
                    ? "Method not found: server/discover; this server uses initialize (protocol versions " + McpProtocol.SessionVersionList + ")"
                    : "Bad Request: Mcp-Session-Id header is required (send initialize first)";
                await WriteErrorAsync(context, StatusCodes.Status400BadRequest, discover ? ErrorCodes.MethodNotFound : ErrorCodes.ServerError, message,
                    scan.Kind == JsonRpcMessageKind.Request ? body.Slice(scan.Id.Start, scan.Id.Length).ToArray() : null).ConfigureAwait(false);
                return;
            }
            else if (Engine.Find(target.Name, sessionIds[0]!, SessionTransport.StreamableHttp, caller.Identity) is not { } found)
            {
                await WriteErrorAsync(context, StatusCodes.Status404NotFound, ErrorCodes.ServerError, SessionMessages.UnknownSession).ConfigureAwait(false);
                return;
            }
            else
            {
                session = found;
            }

            var useSse = WantsStream(body, scan); // the agent accepts text/event-stream: checked on arrival
            var sink = new MessageSink(acceptsRelatedMessages: useSse);
            int expected;
            try
            {
                var (count, refused) = await Engine.ReceiveAsync(snapshot, session!, caller, body, scan, sink, context.RequestAborted).ConfigureAwait(false);
                if (refused is { } batchRefusal)
                {
                    await WriteRefusalAsync(context, batchRefusal).ConfigureAwait(false);
                    return;
                }
                expected = count;
            }
            catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
            {
                session!.Abandon(sink);
                return;
            }
            if (sink.Held > 0)
            {
                // A call waits for a person: the body (copied where needed) and the in-flight place go back now.
                holding = true;
                context.Request.BodyReader.AdvanceTo(body.End);
                Engine.InFlight.Exit();
            }

            if (expected == 0)
            {
                context.Response.StatusCode = StatusCodes.Status202Accepted;
                return;
            }
            var isBatch = scan.Kind == JsonRpcMessageKind.Batch;
            if (useSse)
            {
                await WriteSseResponseAsync(context, session!, Engine.Audit, sink, expected, jsonIfAnsweredFirst: !isBatch).ConfigureAwait(false);
            }
            else
            {
                var started = await WriteJsonResponseAsync(context, session!, Engine.Audit, sink, expected, isBatch, isInitialize).ConfigureAwait(false);
                if (isInitialize && !started)
                {
                    // The upstream refused initialize, was unreachable, or never answered: no session to keep.
                    await session!.DisposeAsync().ConfigureAwait(false);
                }
            }
        }
        finally
        {
            if (!holding)
            {
                context.Request.BodyReader.AdvanceTo(body.End);
                Engine.InFlight.Exit();
            }
        }
    }

    /// <summary>SSE for tool calls (they may bring progress, logging, sampling or elicitation); JSON for everything else.</summary>
    private static bool WantsStream(ReadOnlySequence<byte> body, in JsonRpcScan scan)
    {
        if (scan.Kind == JsonRpcMessageKind.Request)
        {
            return scan.Method == McpMethod.ToolsCall;
        }
        if (scan.Kind != JsonRpcMessageKind.Batch)
        {
            return false;
        }
        foreach (var range in JsonRpcScanner.EnumerateBatch(body))
        {
            if (JsonRpcScanner.Scan(body.Slice(range.Start, range.Length), out var element) == ScanStatus.Ok && element.Method == McpMethod.ToolsCall)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>The session's standalone stream: server requests and notifications outside any POST. One at a time.</summary>
    public async Task GetAsync(HttpContext context)
    {
        if (HttpGuards.Resolve(context, gateway, out _, out var caller, out var refused) is not { } target)
        {
            await WriteErrorAsync(context, refused.Status, refused.Code, refused.Message).ConfigureAwait(false);
            return;
        }
        if (!HttpGuards.Accepts(context.Request, "text/event-stream"))
        {
            await WriteErrorAsync(context, StatusCodes.Status406NotAcceptable, ErrorCodes.ServerError,
                "Not Acceptable: the client must accept text/event-stream").ConfigureAwait(false);
            return;
        }
        if (await FindSessionAsync(context, target, caller).ConfigureAwait(false) is not { } session)
        {
            return;
        }
        var sink = new MessageSink(acceptsRelatedMessages: true);
        if (!session.AttachStream(sink))
        {
            await WriteErrorAsync(context, StatusCodes.Status409Conflict, ErrorCodes.ServerError,
                "Conflict: only one stream per session is allowed").ConfigureAwait(false);
            return;
        }
        try
        {
            await StreamAsync(context, sink, endpointEvent: null, Engine.Audit).ConfigureAwait(false);
        }
        finally
        {
            session.DetachStream(sink);
        }
    }

    /// <summary>Ends a session: its upstream session (a stdio process) is closed and its calls in flight are failed.</summary>
    public async Task DeleteAsync(HttpContext context)
    {
        if (HttpGuards.Resolve(context, gateway, out _, out var caller, out var refused) is not { } target)
        {
            await WriteErrorAsync(context, refused.Status, refused.Code, refused.Message).ConfigureAwait(false);
            return;
        }
        if (await FindSessionAsync(context, target, caller).ConfigureAwait(false) is not { } session)
        {
            return;
        }
        await session.DisposeAsync().ConfigureAwait(false);
        context.Response.StatusCode = StatusCodes.Status200OK;
    }

    private async Task<AgentSession?> FindSessionAsync(HttpContext context, SessionTarget target, Caller caller)
    {
        var ids = context.Request.Headers[McpProtocol.SessionIdHeader];
        if (ids.Count != 1)
        {
            await WriteErrorAsync(context, StatusCodes.Status400BadRequest, ErrorCodes.ServerError,
                "Bad Request: exactly one Mcp-Session-Id header is required").ConfigureAwait(false);
            return null;
        }
        if (Engine.Find(target.Name, ids[0]!, SessionTransport.StreamableHttp, caller.Identity) is not { } session)
        {
            await WriteErrorAsync(context, StatusCodes.Status404NotFound, ErrorCodes.ServerError, SessionMessages.UnknownSession).ConfigureAwait(false);
            return null;
        }
        return session;
    }
}
