using System.Buffers;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using System.Text;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Sidecar.Decisions;
using Sidecar.JsonRpc;

namespace Sidecar.Gateway;

/// <summary>
/// The agent side: Streamable HTTP (<c>POST|GET|DELETE /servers/{name}/mcp</c>) and legacy HTTP+SSE
/// (<c>GET /servers/{name}/sse</c> + <c>POST /servers/{name}/message?sessionId=</c>).
/// </summary>
internal sealed partial class McpEndpoints(Gateway gateway, ILogger logger)
{
    private const string SessionHeader = "Mcp-Session-Id";
    private static readonly TimeSpan KeepAliveInterval = TimeSpan.FromSeconds(15);
    private static readonly byte[] LatestProtocolVersionHeader = "2026-07-28"u8.ToArray();

    // ---- Streamable HTTP -------------------------------------------------------------------------------------

    /// <summary>
    /// A Streamable HTTP POST. The checks before the body and the body itself (which came with the headers, usually)
    /// are taken synchronously; the rest runs as one pooled state machine (<see cref="HandlePostAsync"/>).
    /// </summary>
    public Task PostAsync(HttpContext context)
    {
        if (FindServer(context, out var refused) is not { } server)
        {
            return WriteErrorAsync(context, refused.Status, ErrorCodes.ServerError, refused.Message);
        }
        var request = context.Request;
        if (!HttpGuards.Accepts(request, "application/json") || !HttpGuards.Accepts(request, "text/event-stream"))
        {
            return WriteErrorAsync(context, StatusCodes.Status406NotAcceptable, ErrorCodes.ServerError,
                "Not Acceptable: the client must accept both application/json and text/event-stream");
        }
        if (!gateway.InFlight.TryEnter())
        {
            return WriteOverloadedAsync(context);
        }
        // ReadJsonBodyAsync is async: a failure is in the ValueTask (PostAfterReadAsync gives the place back), never thrown here.
        var read = ReadJsonBodyAsync(context);
        if (!read.IsCompletedSuccessfully)
        {
            return AsTask(PostAfterReadAsync(context, server, read));
        }
        if (read.GetAwaiter().GetResult() is { } body)
        {
            return AsTask(HandlePostAsync(context, server, body)); // leaves the gate when done
        }
        gateway.InFlight.Exit();
        return Task.CompletedTask;
    }

    /// <summary>
    /// The request handlers run as pooled <see cref="ValueTask"/> state machines (no allocation per request once the
    /// pool is warm); Kestrel wants a <see cref="Task"/>, built here only when the handler did not finish at once.
    /// </summary>
    private static Task AsTask(ValueTask task)
    {
        if (task.IsCompletedSuccessfully)
        {
            task.GetAwaiter().GetResult(); // gives a pooled state machine back
            return Task.CompletedTask;
        }
        return task.AsTask();
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask PostAfterReadAsync(HttpContext context, ServerRuntime server, ValueTask<ReadOnlySequence<byte>?> read)
    {
        ReadOnlySequence<byte>? body;
        try
        {
            body = await read.ConfigureAwait(false);
        }
        catch
        {
            gateway.InFlight.Exit();
            throw;
        }
        if (body is { } buffer)
        {
            await HandlePostAsync(context, server, buffer).ConfigureAwait(false);
        }
        else
        {
            gateway.InFlight.Exit();
        }
    }

    /// <summary>
    /// Handles a POST whose body has been read; whatever happens, gives the body back to Kestrel and the place taken
    /// in <see cref="Gateway.InFlight"/> back to the gate.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask HandlePostAsync(HttpContext context, ServerRuntime server, ReadOnlySequence<byte> body)
    {
        try
        {
            var request = context.Request;
            if (!TryScan(body, out var scan, out var refused))
            {
                await WriteErrorAsync(context, refused.Status, refused.Code, refused.Message).ConfigureAwait(false);
                return;
            }

            var version = request.Headers["MCP-Protocol-Version"];
            if (version.Count == 1 && version[0] == "2026-07-28"
                && server.Connector is Upstreams.IStatelessUpstream stateless
                && await SpeaksStatelessAsync(stateless, context.RequestAborted).ConfigureAwait(false))
            {
                await HandleStatelessAsync(context, server, stateless, body, scan).ConfigureAwait(false);
                return;
            }
            if (version.Count == 1 && version[0] == "2026-07-28")
            {
                // The stateless era: this gateway serves upstreams in the session era; say so the way dual-era clients
                // (the official C# client probes server/discover first) understand at once, and they fall back to initialize.
                await WriteUnsupportedVersionAsync(context, scan.Kind == JsonRpcMessageKind.Request ? body.Slice(scan.Id.Start, scan.Id.Length).ToArray() : []).ConfigureAwait(false);
                return;
            }
            if (HttpGuards.CheckProtocolVersion(request) is { } versionError)
            {
                await WriteErrorAsync(context, StatusCodes.Status400BadRequest, ErrorCodes.ServerError, versionError).ConfigureAwait(false);
                return;
            }

            var sessionIds = request.Headers[SessionHeader];
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
                    await WriteErrorAsync(context, StatusCodes.Status400BadRequest, ErrorCodes.InvalidRequest,
                        "Invalid Request: initialize starts a new session and must not carry Mcp-Session-Id").ConfigureAwait(false);
                    return;
                }
                session = gateway.CreateSession(server, legacy: false);
                if (session is null)
                {
                    await WriteErrorAsync(context, StatusCodes.Status503ServiceUnavailable, ErrorCodes.ServerError,
                        "Service Unavailable: too many sessions").ConfigureAwait(false);
                    return;
                }
            }
            else if (sessionIds.Count == 0)
            {
                var message = scan.Kind == JsonRpcMessageKind.Request && scan.Method == McpMethod.ServerDiscover
                    ? "Method not found: server/discover; this server uses initialize (protocol versions " + string.Join(", ", HttpGuards.SupportedProtocolVersions) + ")"
                    : "Bad Request: Mcp-Session-Id header is required (send initialize first)";
                var code = scan.Method == McpMethod.ServerDiscover ? ErrorCodes.MethodNotFound : ErrorCodes.ServerError;
                await WriteErrorAsync(context, StatusCodes.Status400BadRequest, code, message,
                    scan.Kind == JsonRpcMessageKind.Request ? body.Slice(scan.Id.Start, scan.Id.Length).ToArray() : null).ConfigureAwait(false);
                return;
            }
            else if (!server.Sessions.TryGetValue(sessionIds[0]!, out session) || session.IsDisposed || session.Legacy)
            {
                await WriteErrorAsync(context, StatusCodes.Status404NotFound, ErrorCodes.ServerError, "Not Found: unknown or expired session").ConfigureAwait(false);
                return;
            }

            var useSse = WantsStream(body, scan); // the agent accepts text/event-stream: checked on arrival
            var sink = new MessageSink(acceptsRelatedMessages: useSse);
            var expected = 0;
            var isBatch = scan.Kind == JsonRpcMessageKind.Batch;
            try
            {
                if (isBatch)
                {
                    foreach (var range in BatchRanges(body))
                    {
                        var element = body.Slice(range.Start, range.Length);
                        expected += await ProcessBatchElementAsync(session, element, sink, context.RequestAborted).ConfigureAwait(false) ? 1 : 0;
                    }
                }
                else
                {
                    expected = await session.ProcessAsync(body, scan, sink, context.RequestAborted).ConfigureAwait(false) ? 1 : 0;
                }
            }
            catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
            {
                session.Abandon(sink);
                return;
            }

            if (expected == 0)
            {
                context.Response.StatusCode = StatusCodes.Status202Accepted;
                return;
            }

            if (useSse)
            {
                await WriteSseResponseAsync(context, session, sink, expected, jsonIfAnsweredFirst: !isBatch).ConfigureAwait(false);
            }
            else
            {
                var started = await WriteJsonResponseAsync(context, session, sink, expected, isBatch, isInitialize).ConfigureAwait(false);
                if (isInitialize && !started)
                {
                    // The upstream refused initialize, was unreachable, or never answered: no session to keep.
                    await session.DisposeAsync().ConfigureAwait(false);
                }
            }
        }
        finally
        {
            context.Request.BodyReader.AdvanceTo(body.End);
            gateway.InFlight.Exit();
        }
    }

    /// <summary>The element ranges of a scanned batch (collected first: the enumerator can't live across awaits).</summary>
    private static List<TokenRange> BatchRanges(ReadOnlySequence<byte> body)
    {
        var ranges = new List<TokenRange>();
        foreach (var range in JsonRpcScanner.EnumerateBatch(body))
        {
            ranges.Add(range);
        }
        return ranges;
    }

    private async ValueTask<bool> ProcessBatchElementAsync(AgentSession session, ReadOnlySequence<byte> element, MessageSink sink, CancellationToken cancellationToken)
    {
        var status = JsonRpcScanner.Scan(element, out var scan, gateway.Options.Scanner);
        if (status != ScanStatus.Ok && !(status == ScanStatus.InvalidParams && scan.Kind == JsonRpcMessageKind.Request))
        {
            var rawId = scan.IdKind is JsonRpcIdKind.String or JsonRpcIdKind.Number ? element.Slice(scan.Id.Start, scan.Id.Length).ToArray() : null;
            sink.TryWrite(JsonRpcResponses.Error(rawId, ScanErrorCode(status), ScanErrorMessage(scan)), true);
            return true;
        }
        if (scan.Kind == JsonRpcMessageKind.Request && scan.Method == McpMethod.Initialize)
        {
            sink.TryWrite(JsonRpcResponses.Error(element.Slice(scan.Id.Start, scan.Id.Length).ToArray(), ErrorCodes.InvalidRequest,
                "Invalid Request: initialize cannot be part of a batch"), true);
            return true;
        }
        if (scan.Kind == JsonRpcMessageKind.Notification && scan.Method == McpMethod.ToolsCall)
        {
            logger.LogWarning("Refused a tools/call notification inside a batch for {Server}", session.Server.Name);
            return false;
        }
        return await session.ProcessAsync(element, scan, sink, cancellationToken).ConfigureAwait(false);
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

    public async Task GetAsync(HttpContext context)
    {
        if (FindServer(context, out var refused) is not { } server)
        {
            await WriteErrorAsync(context, refused.Status, ErrorCodes.ServerError, refused.Message).ConfigureAwait(false);
            return;
        }
        if (!HttpGuards.Accepts(context.Request, "text/event-stream"))
        {
            await WriteErrorAsync(context, StatusCodes.Status406NotAcceptable, ErrorCodes.ServerError,
                "Not Acceptable: the client must accept text/event-stream").ConfigureAwait(false);
            return;
        }
        var session = await FindSessionAsync(context, server).ConfigureAwait(false);
        if (session is null)
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
            await StreamAsync(context, sink, endpointEvent: null, server.Audit).ConfigureAwait(false);
        }
        finally
        {
            session.DetachStream(sink);
        }
    }

    public async Task DeleteAsync(HttpContext context)
    {
        if (FindServer(context, out var refused) is not { } server)
        {
            await WriteErrorAsync(context, refused.Status, ErrorCodes.ServerError, refused.Message).ConfigureAwait(false);
            return;
        }
        var session = await FindSessionAsync(context, server).ConfigureAwait(false);
        if (session is null)
        {
            return;
        }
        await session.DisposeAsync().ConfigureAwait(false);
        context.Response.StatusCode = StatusCodes.Status200OK;
    }

    private async Task<AgentSession?> FindSessionAsync(HttpContext context, ServerRuntime server)
    {
        var ids = context.Request.Headers[SessionHeader];
        if (ids.Count != 1)
        {
            await WriteErrorAsync(context, StatusCodes.Status400BadRequest, ErrorCodes.ServerError,
                "Bad Request: exactly one Mcp-Session-Id header is required").ConfigureAwait(false);
            return null;
        }
        if (!server.Sessions.TryGetValue(ids[0]!, out var session) || session.IsDisposed || session.Legacy)
        {
            await WriteErrorAsync(context, StatusCodes.Status404NotFound, ErrorCodes.ServerError, "Not Found: unknown or expired session").ConfigureAwait(false);
            return null;
        }
        return session;
    }

    // ---- Legacy HTTP+SSE (2024-11-05) --------------------------------------------------------------------------

    public async Task LegacySseAsync(HttpContext context)
    {
        if (FindServer(context, out var refused) is not { } server)
        {
            await WriteErrorAsync(context, refused.Status, ErrorCodes.ServerError, refused.Message).ConfigureAwait(false);
            return;
        }
        var session = gateway.CreateSession(server, legacy: true);
        if (session is null)
        {
            await WriteErrorAsync(context, StatusCodes.Status503ServiceUnavailable, ErrorCodes.ServerError, "Service Unavailable: too many sessions").ConfigureAwait(false);
            return;
        }
        var sink = new MessageSink(acceptsRelatedMessages: true);
        session.AttachStream(sink);
        try
        {
            var endpoint = $"{context.Request.PathBase}/servers/{server.Name}/message?sessionId={session.Id}";
            await StreamAsync(context, sink, Encoding.UTF8.GetBytes(endpoint), server.Audit).ConfigureAwait(false);
        }
        finally
        {
            // A legacy session lives exactly as long as its stream.
            await session.DisposeAsync().ConfigureAwait(false);
        }
    }

    public Task LegacyMessageAsync(HttpContext context) => AsTask(LegacyMessageCoreAsync(context));

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask LegacyMessageCoreAsync(HttpContext context)
    {
        if (FindServer(context, out var refused) is not { } server)
        {
            await WriteErrorAsync(context, refused.Status, ErrorCodes.ServerError, refused.Message).ConfigureAwait(false);
            return;
        }
        var id = context.Request.Query["sessionId"];
        if (id.Count != 1 || !server.Sessions.TryGetValue(id[0]!, out var session) || !session.Legacy || session.IsDisposed)
        {
            await WriteErrorAsync(context, StatusCodes.Status404NotFound, ErrorCodes.ServerError, "Not Found: unknown or expired session").ConfigureAwait(false);
            return;
        }
        if (!gateway.InFlight.TryEnter())
        {
            await WriteOverloadedAsync(context).ConfigureAwait(false);
            return;
        }
        try
        {
            await LegacyMessageInFlightAsync(context, session).ConfigureAwait(false);
        }
        finally
        {
            gateway.InFlight.Exit();
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask LegacyMessageInFlightAsync(HttpContext context, AgentSession session)
    {
        if (await ReadJsonBodyAsync(context).ConfigureAwait(false) is not { } body)
        {
            return;
        }
        try
        {
            if (!TryScan(body, out var scan, out var refused))
            {
                await WriteErrorAsync(context, refused.Status, refused.Code, refused.Message).ConfigureAwait(false);
                return;
            }
            // Answers go to the session's SSE stream: the POST itself is only acknowledged.
            var sink = session.StreamSink ?? new MessageSink(acceptsRelatedMessages: true);
            if (scan.Kind == JsonRpcMessageKind.Batch)
            {
                foreach (var range in BatchRanges(body))
                {
                    await ProcessBatchElementAsync(session, body.Slice(range.Start, range.Length), sink, context.RequestAborted).ConfigureAwait(false);
                }
            }
            else
            {
                await session.ProcessAsync(body, scan, sink, context.RequestAborted).ConfigureAwait(false);
            }
            context.Response.StatusCode = StatusCodes.Status202Accepted;
            context.Response.ContentType = "text/plain";
            context.Response.BodyWriter.Write("Accepted"u8);
        }
        finally
        {
            context.Request.BodyReader.AdvanceTo(body.End);
        }
    }

    // ---- Shared --------------------------------------------------------------------------------------------------

    /// <summary>An answer that ends a request early: HTTP status, JSON-RPC error code and message.</summary>
    private readonly record struct Refusal(int Status, int Code, string Message);

    /// <summary>Host/Origin checks and server lookup. Null (and why) when the request can't go on.</summary>
    private ServerRuntime? FindServer(HttpContext context, out Refusal refused)
    {
        if (gateway.Guards.CheckHostAndOrigin(context.Request) is { } forbidden)
        {
            logger.LogWarning("Refused a request from {Remote}: {Reason}", context.Connection.RemoteIpAddress, forbidden);
            refused = new Refusal(StatusCodes.Status403Forbidden, ErrorCodes.ServerError, forbidden);
            return null;
        }
        var name = context.Request.RouteValues["name"] as string;
        var server = name is null ? null : gateway.FindServer(name);
        refused = server is null ? new Refusal(StatusCodes.Status404NotFound, ErrorCodes.ServerError, $"Not Found: no server named \"{name}\"") : default;
        return server;
    }

    /// <summary>
    /// Collects the responses and writes them as one JSON body (an array for a batch). For <c>initialize</c>, the
    /// session id header is sent only when the upstream accepted it; returns whether it did.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private static async ValueTask<bool> WriteJsonResponseAsync(HttpContext context, AgentSession session, MessageSink sink, int expected, bool isBatch, bool isInitialize)
    {
        // One response (the usual case) is kept as is; only a batch needs a list.
        var first = default(ReadOnlyMemory<byte>);
        var responses = isBatch ? new List<ReadOnlyMemory<byte>>(expected) : null;
        var received = 0;
        long ticket = 0; // the newest audit record the answers wait for: records are written in order
        try
        {
            while (received < expected && await sink.WaitToReadAsync(context.RequestAborted).ConfigureAwait(false))
            {
                while (received < expected && sink.TryRead(out var message))
                {
                    if (message.IsResponse)
                    {
                        if (received++ == 0)
                        {
                            first = message.Payload;
                        }
                        responses?.Add(message.Payload);
                        ticket = Math.Max(ticket, message.AuditTicket);
                    }
                }
            }
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            session.Abandon(sink);
            return false;
        }
        await session.Server.Audit.WhenWrittenAsync(ticket).ConfigureAwait(false);

        var response = context.Response;
        var initialized = isInitialize && received > 0 && JsonRpcScanner.Scan(first.Span, out var scan) == ScanStatus.Ok && scan.Kind == JsonRpcMessageKind.Response;
        if (initialized)
        {
            response.Headers[SessionHeader] = session.Id;
        }
        if (responses is null)
        {
            await WriteJsonAsync(context, first).ConfigureAwait(false);
            return initialized;
        }
        response.StatusCode = StatusCodes.Status200OK;
        response.ContentType = "application/json";
        var length = 2 + Math.Max(responses.Count - 1, 0); // "[" and "]", and a "," between messages
        foreach (var message in responses)
        {
            length += message.Length;
        }
        response.ContentLength = length;
        var writer = response.BodyWriter;
        writer.Write("["u8);
        for (var i = 0; i < responses.Count; i++)
        {
            if (i > 0)
            {
                writer.Write(","u8);
            }
            writer.Write(responses[i].Span);
        }
        writer.Write("]"u8);
        await writer.FlushAsync(context.RequestAborted).ConfigureAwait(false);
        return initialized;
    }

    /// <summary>One JSON-RPC message as the whole JSON body, with its length: headers and body leave in one write.</summary>
    private static ValueTask<FlushResult> WriteJsonAsync(HttpContext context, ReadOnlyMemory<byte> message)
    {
        var response = context.Response;
        response.StatusCode = StatusCodes.Status200OK;
        response.ContentType = "application/json";
        response.ContentLength = message.Length;
        return response.BodyWriter.WriteAsync(message, context.RequestAborted);
    }

    /// <summary>
    /// The SSE answer to one POST: every message for it as it comes (related requests and notifications, then the
    /// responses), one flush per burst, until the expected responses have been written.
    /// </summary>
    /// <remarks>
    /// The agent accepts both answers (checked on arrival), and the stream only matters when something comes before
    /// the answer (progress, a server request). With <paramref name="jsonIfAnsweredFirst"/> (one request, not a
    /// batch), the stream starts with the first message that is not the answer; an answer that comes first is sent
    /// as a plain JSON body with its length: one write instead of a chunked stream and its end.
    /// </remarks>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private static async ValueTask WriteSseResponseAsync(HttpContext context, AgentSession session, MessageSink sink, int expected, bool jsonIfAnsweredFirst)
    {
        var response = context.Response;
        var writer = response.BodyWriter;
        var received = 0;
        var streaming = false;
        try
        {
            while (received < expected && await sink.WaitToReadAsync(context.RequestAborted).ConfigureAwait(false))
            {
                while (received < expected && sink.TryRead(out var message))
                {
                    if (message.AuditTicket != 0)
                    {
                        await session.Server.Audit.WhenWrittenAsync(message.AuditTicket).ConfigureAwait(false);
                    }
                    if (!streaming)
                    {
                        if (jsonIfAnsweredFirst && message.IsResponse && expected == 1)
                        {
                            await WriteJsonAsync(context, message.Payload).ConfigureAwait(false);
                            return;
                        }
                        StartEventStream(response);
                        streaming = true;
                    }
                    SseWriter.WriteEvent(writer, "message"u8, message.Payload.Span);
                    if (message.IsResponse)
                    {
                        received++;
                    }
                }
                await writer.FlushAsync(context.RequestAborted).ConfigureAwait(false);
            }
            if (!streaming)
            {
                StartEventStream(response); // the session ended before anything came: an empty stream
            }
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            session.Abandon(sink);
        }
    }

    /// <summary>The status and headers of an SSE answer (written with its first flush).</summary>
    private static void StartEventStream(HttpResponse response)
    {
        response.StatusCode = StatusCodes.Status200OK;
        response.ContentType = "text/event-stream";
        response.Headers.CacheControl = "no-cache";
    }

    /// <summary>A long-lived SSE stream (GET stream or legacy SSE) with keep-alive comments, until the agent leaves or the session ends.</summary>
    private static async Task StreamAsync(HttpContext context, MessageSink sink, byte[]? endpointEvent, Audit.AuditRecorder audit)
    {
        var response = context.Response;
        StartEventStream(response);
        response.Headers["X-Accel-Buffering"] = "no";
        var writer = response.BodyWriter;
        if (endpointEvent is not null)
        {
            SseWriter.WriteEvent(writer, "endpoint"u8, endpointEvent);
        }
        else
        {
            SseWriter.WriteComment(writer, " stream open"u8);
        }
        var aborted = context.RequestAborted;
        var keepAlive = CancellationTokenSource.CreateLinkedTokenSource(aborted);
        try
        {
            await writer.FlushAsync(aborted).ConfigureAwait(false);
            while (!aborted.IsCancellationRequested)
            {
                keepAlive.CancelAfter(KeepAliveInterval);
                bool more;
                try
                {
                    more = await sink.WaitToReadAsync(keepAlive.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!aborted.IsCancellationRequested)
                {
                    SseWriter.WriteComment(writer, " keep-alive"u8);
                    await writer.FlushAsync(aborted).ConfigureAwait(false);
                    keepAlive.Dispose();
                    keepAlive = CancellationTokenSource.CreateLinkedTokenSource(aborted);
                    continue;
                }
                if (!more)
                {
                    return; // the session ended
                }
                while (sink.TryRead(out var message))
                {
                    if (message.AuditTicket != 0)
                    {
                        await audit.WhenWrittenAsync(message.AuditTicket).ConfigureAwait(false);
                    }
                    SseWriter.WriteEvent(writer, "message"u8, message.Payload.Span);
                }
                await writer.FlushAsync(aborted).ConfigureAwait(false);
                if (!keepAlive.TryReset())
                {
                    // The keep-alive fired just as messages came: start a fresh one.
                    keepAlive.Dispose();
                    keepAlive = CancellationTokenSource.CreateLinkedTokenSource(aborted);
                }
            }
        }
        catch (OperationCanceledException) when (aborted.IsCancellationRequested)
        {
            // The agent went away.
        }
        finally
        {
            keepAlive.Dispose();
        }
    }

    /// <summary>Checks the media type and reads the whole body. Null when an error response was written instead.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<ReadOnlySequence<byte>?> ReadJsonBodyAsync(HttpContext context)
    {
        if (!HttpGuards.IsJsonContent(context.Request))
        {
            await WriteErrorAsync(context, StatusCodes.Status415UnsupportedMediaType, ErrorCodes.ServerError,
                "Unsupported Media Type: Content-Type must be application/json").ConfigureAwait(false);
            return null;
        }
        var body = await ReadBodyAsync(context, gateway.Options.Limits.MaxMessageBytes).ConfigureAwait(false);
        if (body.Error is not null)
        {
            await WriteErrorAsync(context, body.Status, ErrorCodes.InvalidRequest, body.Error).ConfigureAwait(false);
            return null;
        }
        return body.Buffer;
    }

    /// <summary>
    /// Scans a body and refuses what must go no further: anything the scanner rejects (a request with invalid params
    /// is answered in its session, with its id) and a <c>tools/call</c> sent as a notification.
    /// </summary>
    private bool TryScan(ReadOnlySequence<byte> body, out JsonRpcScan scan, out Refusal refused)
    {
        var status = JsonRpcScanner.Scan(body, out scan, gateway.Options.Scanner);
        if (status != ScanStatus.Ok && !(status == ScanStatus.InvalidParams && scan.Kind == JsonRpcMessageKind.Request))
        {
            refused = new Refusal(scan.Status == ScanStatus.TooLarge ? StatusCodes.Status413PayloadTooLarge : StatusCodes.Status400BadRequest,
                ScanErrorCode(scan.Status), ScanErrorMessage(scan));
            return false;
        }
        if (scan.Kind == JsonRpcMessageKind.Notification && scan.Method == McpMethod.ToolsCall)
        {
            refused = new Refusal(StatusCodes.Status400BadRequest, ErrorCodes.InvalidRequest,
                "Invalid Request: tools/call must be a request with an id, not a notification");
            return false;
        }
        refused = default;
        return true;
    }

    private readonly record struct Body(ReadOnlySequence<byte> Buffer, int Status, string? Error);

    /// <summary>
    /// Reads a whole request body without copying it, refusing anything over the size limit. A body that has already
    /// arrived (the usual case: it came with the headers) is taken without waiting.
    /// </summary>
    private static ValueTask<Body> ReadBodyAsync(HttpContext context, int maxBytes)
    {
        var reader = context.Request.BodyReader;
        try
        {
            if (reader.TryRead(out var result))
            {
                var buffer = result.Buffer;
                if (buffer.Length > maxBytes)
                {
                    reader.AdvanceTo(buffer.End);
                    return new ValueTask<Body>(TooLarge(maxBytes));
                }
                if (result.IsCompleted)
                {
                    return new ValueTask<Body>(new Body(buffer, 0, null));
                }
                reader.AdvanceTo(buffer.Start, buffer.End);
            }
        }
        catch (BadHttpRequestException ex)
        {
            return new ValueTask<Body>(BadRequest(ex, maxBytes));
        }
        return ReadBodySlowAsync(context, reader, maxBytes);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private static async ValueTask<Body> ReadBodySlowAsync(HttpContext context, PipeReader reader, int maxBytes)
    {
        try
        {
            while (true)
            {
                var result = await reader.ReadAsync(context.RequestAborted).ConfigureAwait(false);
                var buffer = result.Buffer;
                if (buffer.Length > maxBytes)
                {
                    reader.AdvanceTo(buffer.End);
                    return TooLarge(maxBytes);
                }
                if (result.IsCompleted)
                {
                    return new Body(buffer, 0, null);
                }
                reader.AdvanceTo(buffer.Start, buffer.End);
            }
        }
        catch (BadHttpRequestException ex)
        {
            return BadRequest(ex, maxBytes);
        }
    }

    private static Body TooLarge(int maxBytes) =>
        new(default, StatusCodes.Status413PayloadTooLarge, $"Payload Too Large: messages are limited to {maxBytes} bytes");

    private static Body BadRequest(BadHttpRequestException ex, int maxBytes) =>
        ex.StatusCode == StatusCodes.Status413PayloadTooLarge ? TooLarge(maxBytes) : new(default, ex.StatusCode, "Bad Request: " + ex.Message);

    private static int ScanErrorCode(ScanStatus status) => status switch
    {
        ScanStatus.ParseError or ScanStatus.InvalidUtf8 => ErrorCodes.ParseError,
        ScanStatus.InvalidParams => ErrorCodes.InvalidParams,
        _ => ErrorCodes.InvalidRequest,
    };

    private static string ScanErrorMessage(in JsonRpcScan scan) => scan.Status switch
    {
        ScanStatus.ParseError or ScanStatus.InvalidUtf8 => "Parse error: " + scan.Error,
        ScanStatus.InvalidParams => "Invalid params: " + scan.Error,
        _ => "Invalid Request: " + scan.Error,
    };

    private static async Task WriteUnsupportedVersionAsync(HttpContext context, byte[] rawId)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var writer = new System.Text.Json.Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            writer.WriteString("jsonrpc"u8, "2.0"u8);
            writer.WritePropertyName("id"u8);
            if (rawId.Length == 0)
            {
                writer.WriteNullValue();
            }
            else
            {
                writer.WriteRawValue(rawId, skipInputValidation: true);
            }
            writer.WriteStartObject("error"u8);
            writer.WriteNumber("code"u8, -32022);
            writer.WriteString("message"u8, "Unsupported protocol version 2026-07-28: this gateway serves MCP sessions (initialize)");
            writer.WriteStartObject("data"u8);
            writer.WriteStartArray("supported"u8);
            foreach (var v in HttpGuards.SupportedProtocolVersions)
            {
                writer.WriteStringValue(v);
            }
            writer.WriteEndArray();
            writer.WriteString("requested"u8, LatestProtocolVersionHeader);
            writer.WriteEndObject();
            writer.WriteEndObject();
            writer.WriteEndObject();
        }
        context.Response.StatusCode = StatusCodes.Status400BadRequest;
        context.Response.ContentType = "application/json";
        await context.Response.BodyWriter.WriteAsync(buffer.WrittenMemory, context.RequestAborted).ConfigureAwait(false);
    }

    /// <summary>
    /// HTTP 503 for a request shed by <see cref="Gateway.InFlight"/>: its body is never read, so the JSON-RPC error has
    /// no id; <c>Retry-After</c> (seconds) and <c>error.data.retryAfterMs</c> say when to try again.
    /// </summary>
    private async Task WriteOverloadedAsync(HttpContext context)
    {
        var response = context.Response;
        response.StatusCode = StatusCodes.Status503ServiceUnavailable;
        response.Headers.RetryAfter = "1";
        response.ContentType = "application/json";
        try
        {
            await response.BodyWriter.WriteAsync(gateway.OverloadedResponse, context.RequestAborted).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // The client is gone.
        }
    }

    private static async Task WriteErrorAsync(HttpContext context, int status, int code, string message, byte[]? rawId = null)
    {
        if (context.Response.HasStarted)
        {
            return;
        }
        context.Response.StatusCode = status;
        context.Response.ContentType = "application/json";
        var bytes = JsonRpcResponses.Error(rawId, code, message);
        try
        {
            await context.Response.BodyWriter.WriteAsync(bytes, context.RequestAborted).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // The client is gone.
        }
    }
}
