using System.Buffers;
using System.IO.Pipelines;
using Sidecar.JsonRpc;
using Sidecar.Protocol;

namespace Sidecar.Sessions;

/// <summary>
/// The agent transport of <c>sidecar wrap</c>: newline-delimited JSON-RPC on the agent's stdin and stdout, one
/// session for the life of the process. Each line goes through <see cref="SessionEngine.Check"/> and
/// <see cref="SessionEngine.ReceiveAsync"/> exactly as an HTTP body does; everything for the agent (answers, server
/// requests, notifications) goes to stdout in the order it comes, one message per line and nothing else.
/// </summary>
internal sealed class StdioAgent(SessionEngine engine, McpSession session)
{
    /// <summary>
    /// Reads messages until stdin ends (or <paramref name="cancellationToken"/> fires), then waits for the answers
    /// still owed and returns. The session is the caller's to dispose.
    /// </summary>
    public async Task RunAsync(PipeReader input, PipeWriter output, CancellationToken cancellationToken)
    {
        var sink = new MessageSink(acceptsRelatedMessages: true);
        session.AttachStream(sink);
        var writing = WriteAsync(sink, output, cancellationToken);
        try
        {
            await ReadAsync(input, sink, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Stopping.
        }
        finally
        {
            // stdin ended: the answers already owed still come (within limits.upstreamTimeout), then the session ends.
            var deadline = Environment.TickCount64 + (long)engine.Current.Options.Limits.UpstreamTimeout.TotalMilliseconds;
            while (session.Pending > 0 && Environment.TickCount64 < deadline && !cancellationToken.IsCancellationRequested)
            {
                await Task.Delay(20, CancellationToken.None).ConfigureAwait(false);
            }
            session.DetachStream(sink);
            await session.DisposeAsync().ConfigureAwait(false); // fails what is still in flight: those answers are written too
            sink.Complete();
            await writing.ConfigureAwait(false);
        }
    }

    private async Task ReadAsync(PipeReader input, MessageSink sink, CancellationToken cancellationToken)
    {
        var maxBytes = engine.Current.Options.Limits.MaxMessageBytes;
        var discarding = false; // inside a line that is over the limit: skipped to its end
        while (true)
        {
            var result = await input.ReadAsync(cancellationToken).ConfigureAwait(false);
            var buffer = result.Buffer;
            while (buffer.PositionOf((byte)'\n') is { } end)
            {
                var line = buffer.Slice(0, end);
                buffer = buffer.Slice(buffer.GetPosition(1, end));
                if (discarding)
                {
                    discarding = false;
                    continue;
                }
                await ReceiveLineAsync(line, sink, cancellationToken).ConfigureAwait(false);
            }
            if (buffer.Length > maxBytes)
            {
                if (!discarding)
                {
                    sink.TryWrite(JsonRpcResponses.Error(default, ErrorCodes.InvalidRequest,
                        $"Invalid Request: messages are limited to {maxBytes} bytes (limits.maxMessageBytes)"), true);
                }
                discarding = true;
                buffer = buffer.Slice(buffer.End);
            }
            if (result.IsCompleted)
            {
                if (!discarding && !buffer.IsEmpty)
                {
                    await ReceiveLineAsync(buffer, sink, cancellationToken).ConfigureAwait(false); // a last line without its newline
                }
                input.AdvanceTo(buffer.End);
                return;
            }
            input.AdvanceTo(buffer.Start, buffer.End);
        }
    }

    private async ValueTask ReceiveLineAsync(ReadOnlySequence<byte> line, MessageSink sink, CancellationToken cancellationToken)
    {
        if (line.Length > 0 && line.Slice(line.Length - 1).FirstSpan[0] == (byte)'\r')
        {
            line = line.Slice(0, line.Length - 1);
        }
        if (IsBlank(line))
        {
            return;
        }
        var snapshot = engine.Current;
        if (SessionEngine.Check(line, snapshot.Options, out var scan) is { } refusal)
        {
            if (scan.Kind == JsonRpcMessageKind.Notification)
            {
                // A notification gets no answer (JSON-RPC), not even a refusal: a tools/call without an id is dropped.
                engine.Log.CallAsNotification(session.ServerName);
                return;
            }
            sink.TryWrite(JsonRpcResponses.Error(refusal.RawId ?? IdOf(line, scan), refusal.Code, refusal.Message), true);
            return;
        }
        var (_, refused) = await engine.ReceiveAsync(snapshot, session, line, scan, sink, cancellationToken).ConfigureAwait(false);
        if (refused is { } batchRefusal)
        {
            sink.TryWrite(JsonRpcResponses.Error(batchRefusal.RawId, batchRefusal.Code, batchRefusal.Message), true);
        }
    }

    /// <summary>A refused request's id when the scanner found one (a parse error has none).</summary>
    private static byte[]? IdOf(ReadOnlySequence<byte> line, in JsonRpcScan scan)
        => scan.IdKind is JsonRpcIdKind.String or JsonRpcIdKind.Number ? line.Slice(scan.Id.Start, scan.Id.Length).ToArray() : null;

    private static bool IsBlank(ReadOnlySequence<byte> line)
    {
        foreach (var segment in line)
        {
            if (segment.Span.IndexOfAnyExcept((byte)' ', (byte)'\t') >= 0)
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>
    /// Everything for the agent, one line per message. Raw CR/LF inside a message (only ever insignificant whitespace
    /// in valid JSON, e.g. a pretty-printed answer from an HTTP upstream) become spaces, so a message is one line.
    /// </summary>
    private async Task WriteAsync(MessageSink sink, PipeWriter output, CancellationToken cancellationToken)
    {
        try
        {
            while (await sink.WaitToReadAsync(CancellationToken.None).ConfigureAwait(false))
            {
                while (sink.TryRead(out var message))
                {
                    if (message.AuditTicket != 0)
                    {
                        await engine.Audit.WhenWrittenAsync(message.AuditTicket).ConfigureAwait(false);
                    }
                    var payload = message.Payload.Span;
                    var span = output.GetSpan(payload.Length + 1);
                    payload.CopyTo(span);
                    var target = span[..payload.Length];
                    target.Replace((byte)'\n', (byte)' ');
                    target.Replace((byte)'\r', (byte)' ');
                    span[payload.Length] = (byte)'\n';
                    output.Advance(payload.Length + 1);
                }
                var flushed = await output.FlushAsync(cancellationToken).ConfigureAwait(false);
                if (flushed.IsCompleted)
                {
                    return; // the agent closed its end
                }
            }
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException)
        {
            // The agent went away.
        }
    }
}
