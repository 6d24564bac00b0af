using System.Buffers;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using Microsoft.AspNetCore.Http;
using Sidecar.Audit;
using Sidecar.JsonRpc;
using Sidecar.Protocol;
using Sidecar.Sessions;

namespace Sidecar.Gateway;

/// <summary>
/// Everything the HTTP transports write: the JSON or SSE answer of a POST, the long-lived SSE streams, and errors.
/// Messages come from a <see cref="MessageSink"/>; a message with an audit ticket is written only once its audit
/// record is (<c>audit.durability: before_answer</c>).
/// </summary>
internal static class HttpAnswers
{
    private static readonly TimeSpan KeepAliveInterval = TimeSpan.FromSeconds(15);

    /// <summary>
    /// The Streamable HTTP pooled handlers run as <see cref="ValueTask"/> state machines (no allocation per request
    /// once the pool is warm); Kestrel wants a <see cref="Task"/>, built here only when the handler did not finish at once.
    /// </summary>
    public static Task AsTask(ValueTask task)
    {
        if (task.IsCompletedSuccessfully)
        {
            task.GetAwaiter().GetResult(); // gives a pooled state machine back
            return Task.CompletedTask;
        }
        return task.AsTask();
    }

    /// <summary>The HTTP status of a message the engine refused as a whole.</summary>
    public static int StatusOf(in Refusal refusal) => refusal.Kind == RefusalKind.TooLarge ? StatusCodes.Status413PayloadTooLarge : StatusCodes.Status400BadRequest;

    public static Task WriteRefusalAsync(HttpContext context, in Refusal refusal)
        => WriteErrorAsync(context, StatusOf(refusal), refusal.Code, refusal.Message, refusal.RawId);

    /// <summary>
    /// Collects the responses and writes them as one JSON body (an array for a batch). For <c>initialize</c>, the
    /// session id header is sent only when the upstream accepted it; returns whether it did.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public static async ValueTask<bool> WriteJsonResponseAsync(HttpContext context, AgentSession session, AuditRecorder audit, MessageSink sink,
        int expected, bool isBatch, bool isInitialize)
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
        await audit.WhenWrittenAsync(ticket).ConfigureAwait(false);

        var response = context.Response;
        var initialized = isInitialize && received > 0 && JsonRpcScanner.Scan(first.Span, out var scan) == ScanStatus.Ok && scan.Kind == JsonRpcMessageKind.Response;
        if (initialized)
        {
            response.Headers[McpProtocol.SessionIdHeader] = session.Id;
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
    public static ValueTask<FlushResult> WriteJsonAsync(HttpContext context, ReadOnlyMemory<byte> message, int status = StatusCodes.Status200OK)
    {
        var response = context.Response;
        response.StatusCode = status;
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
    public static async ValueTask WriteSseResponseAsync(HttpContext context, AgentSession session, AuditRecorder audit, MessageSink sink, int expected,
        bool jsonIfAnsweredFirst)
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
                        await audit.WhenWrittenAsync(message.AuditTicket).ConfigureAwait(false);
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
    public static void StartEventStream(HttpResponse response)
    {
        response.StatusCode = StatusCodes.Status200OK;
        response.ContentType = "text/event-stream";
        response.Headers.CacheControl = "no-cache";
    }

    /// <summary>A long-lived SSE stream (GET stream or legacy SSE) with keep-alive comments, until the agent leaves or the session ends.</summary>
    public static async Task StreamAsync(HttpContext context, MessageSink sink, byte[]? endpointEvent, AuditRecorder audit)
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

    /// <summary>
    /// HTTP 503 for a request shed by <see cref="SessionEngine.InFlight"/>: its body is never read, so the JSON-RPC
    /// error has no id; <c>Retry-After</c> (seconds) and <c>error.data.retryAfterMs</c> say when to try again.
    /// </summary>
    /// <summary>
    /// HTTP 503 for a request that arrives while the gateway drains (SIGTERM): -32016 with <c>data.reason</c>
    /// <c>"shutting down"</c>, <c>Connection: close</c>; its body is never read and nothing was decided.
    /// </summary>
    public static Task WriteDrainingAsync(HttpContext context)
    {
        context.Response.Headers.Connection = "close";
        context.Response.Headers.RetryAfter = "1";
        return WriteOverloadedBodyAsync(context, s_draining);
    }

    private static readonly byte[] s_draining = JsonRpcResponses.Error(default, ErrorCodes.UpstreamUnavailable, SessionMessages.Draining, SessionMessages.ShuttingDownReason);

    private static async Task WriteOverloadedBodyAsync(HttpContext context, byte[] body)
    {
        var response = context.Response;
        response.StatusCode = StatusCodes.Status503ServiceUnavailable;
        response.ContentType = "application/json";
        try
        {
            await response.BodyWriter.WriteAsync(body, context.RequestAborted).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // The client is gone.
        }
    }

    public static async Task WriteOverloadedAsync(HttpContext context, byte[] body)
    {
        var response = context.Response;
        response.StatusCode = StatusCodes.Status503ServiceUnavailable;
        response.Headers.RetryAfter = "1";
        response.ContentType = "application/json";
        try
        {
            await response.BodyWriter.WriteAsync(body, context.RequestAborted).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // The client is gone.
        }
    }

    /// <summary>HTTP 503 with <c>Retry-After</c> for a session past <c>limits.maxSessions</c> or <c>limits.maxSessionsPerServer</c>.</summary>
    public static Task WriteSessionsFullAsync(HttpContext context, SessionOpen result, GatewaySnapshot snapshot, ServerState? server)
    {
        context.Response.Headers.RetryAfter = "5";
        var message = result switch
        {
            SessionOpen.ServerFull when server is not null => SessionMessages.SessionsFull($"limits.maxSessionsPerServer for \"{server.Name}\"", server.MaxSessions),
            SessionOpen.IdentityFull => SessionMessages.SessionsFull("limits.maxSessionsPerIdentity for this identity", snapshot.Options.Limits.MaxSessionsPerIdentity),
            _ => SessionMessages.SessionsFull("limits.maxSessions", snapshot.Options.Limits.MaxSessions),
        };
        return WriteErrorAsync(context, StatusCodes.Status503ServiceUnavailable, ErrorCodes.ServerError, message);
    }

    public static async Task WriteErrorAsync(HttpContext context, int status, int code, string message, byte[]? rawId = null)
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
