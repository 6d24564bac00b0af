using System.Buffers;
using System.Runtime.CompilerServices;
using System.Text;
using Microsoft.AspNetCore.Http;
using Sidecar.Identity;
using Sidecar.Protocol;
using Sidecar.Sessions;
using static Sidecar.Gateway.HttpAnswers;

namespace Sidecar.Gateway;

/// <summary>
/// Legacy HTTP+SSE (2024-11-05) over the session engine: <c>GET /servers/{name}/sse</c> opens a session that lives
/// as long as its stream, and announces <c>POST /servers/{name}/message?sessionId=</c>, whose answers go to the stream.
/// </summary>
internal sealed class LegacySseEndpoint(Gateway gateway)
{
    private SessionEngine Engine => gateway.Engine;

    public async Task StreamAsync(HttpContext context)
    {
        if (HttpGuards.Resolve(context, gateway, out var snapshot, out var caller, out var refused) is not { } target)
        {
            await WriteErrorAsync(context, refused.Status, refused.Code, refused.Message).ConfigureAwait(false);
            return;
        }
        var opened = Engine.TryOpen(snapshot, target, SessionTransport.LegacySse, out var session, caller);
        if (opened != SessionOpen.Opened)
        {
            await WriteSessionsFullAsync(context, opened, snapshot, target.Server).ConfigureAwait(false);
            return;
        }
        var sink = new MessageSink(acceptsRelatedMessages: true);
        session!.AttachStream(sink);
        try
        {
            var endpoint = target.Server is { } server
                ? $"{context.Request.PathBase}/servers/{server.Name}/message?sessionId={session.Id}"
                : $"{context.Request.PathBase}/message?sessionId={session.Id}";
            await HttpAnswers.StreamAsync(context, sink, Encoding.UTF8.GetBytes(endpoint), Engine.Audit).ConfigureAwait(false);
        }
        finally
        {
            // A legacy session lives exactly as long as its stream.
            await session.DisposeAsync().ConfigureAwait(false);
        }
    }

    public Task MessageAsync(HttpContext context) => AsTask(MessageCoreAsync(context));

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask MessageCoreAsync(HttpContext context)
    {
        if (HttpGuards.Resolve(context, gateway, out var snapshot, out var caller, out var refused) is not { } target)
        {
            await WriteErrorAsync(context, refused.Status, refused.Code, refused.Message).ConfigureAwait(false);
            return;
        }
        var id = context.Request.Query["sessionId"];
        if (id.Count != 1 || Engine.Find(target.Name, id[0]!, SessionTransport.LegacySse, caller.Identity) is not { } session)
        {
            await WriteErrorAsync(context, StatusCodes.Status404NotFound, ErrorCodes.ServerError, SessionMessages.UnknownSession).ConfigureAwait(false);
            return;
        }
        if (Engine.Draining)
        {
            await WriteDrainingAsync(context).ConfigureAwait(false);
            return;
        }
        if (!Engine.InFlight.TryEnter())
        {
            await WriteOverloadedAsync(context, gateway.OverloadedResponse).ConfigureAwait(false);
            return;
        }
        try
        {
            await InFlightAsync(context, snapshot, session, caller).ConfigureAwait(false);
        }
        finally
        {
            Engine.InFlight.Exit();
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask InFlightAsync(HttpContext context, GatewaySnapshot snapshot, AgentSession session, Caller caller)
    {
        var read = await HttpGuards.ReadBodyAsync(context, snapshot.Options.Limits.MaxMessageBytes).ConfigureAwait(false);
        if (read.Error is not null)
        {
            await WriteErrorAsync(context, read.Status, read.Code, read.Error).ConfigureAwait(false);
            return;
        }
        var body = read.Buffer;
        try
        {
            if (SessionEngine.Check(body, snapshot.Options, out var scan) is { } refusal)
            {
                await WriteRefusalAsync(context, refusal).ConfigureAwait(false);
                return;
            }
            // Answers go to the session's SSE stream: the POST itself is only acknowledged.
            var sink = session.StreamSink ?? new MessageSink(acceptsRelatedMessages: true);
            var (_, batchRefused) = await Engine.ReceiveAsync(snapshot, session, caller, body, scan, sink, context.RequestAborted).ConfigureAwait(false);
            if (batchRefused is { } batchRefusal)
            {
                await WriteRefusalAsync(context, batchRefusal).ConfigureAwait(false);
                return;
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
}
