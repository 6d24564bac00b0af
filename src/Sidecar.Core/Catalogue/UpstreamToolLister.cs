using System.Buffers;
using System.Text.Json;
using Sidecar.Upstreams;

namespace Sidecar.Catalogue;

/// <summary>
/// Asks one upstream server for its tools, for the catalogue (<c>sidecar tools</c>, <c>sidecar scan</c>,
/// <c>GET /v1/tools</c>): a fresh upstream session of its own (a process for stdio), <c>initialize</c> as
/// <c>sidecar-catalogue</c>, <c>notifications/initialized</c>, then <c>tools/list</c> page by page (following
/// <c>nextCursor</c>, at most <see cref="MaxPages"/> pages), and the session is closed. Nothing here is an agent's: no
/// policy applies, and the tools come back as the server described them.
/// </summary>
public static class UpstreamToolLister
{
    public const int MaxPages = 100;
    private static readonly JsonWriterOptions s_json = new() { Indented = false };

    /// <summary>
    /// Every tool of the server behind <paramref name="connector"/>, each the JSON object the server sent (an element
    /// that outlives the answer's document). Throws
    /// <see cref="UpstreamException"/> when the server is unreachable, refuses, answers with an error, or takes longer
    /// than <paramref name="timeout"/> in all.
    /// </summary>
    public static async Task<IReadOnlyList<JsonElement>> ListAsync(IUpstreamConnector connector, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        using var bound = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        bound.CancelAfter(timeout);
        IUpstreamConnection? connection = null;
        try
        {
            connection = await connector.ConnectAsync(bound.Token).ConfigureAwait(false);
            await RequestAsync(connection, 1, "initialize", json =>
            {
                json.WriteString("protocolVersion"u8, "2025-06-18"u8);
                json.WriteStartObject("capabilities"u8);
                json.WriteEndObject();
                json.WriteStartObject("clientInfo"u8);
                json.WriteString("name"u8, "sidecar-catalogue"u8);
                json.WriteString("version"u8, "1"u8);
                json.WriteEndObject();
            }, bound.Token).ConfigureAwait(false);
            await connection.SendAsync(new ReadOnlySequence<byte>("""{"jsonrpc":"2.0","method":"notifications/initialized"}"""u8.ToArray()), 0, bound.Token)
                .ConfigureAwait(false);

            var tools = new List<JsonElement>();
            string? cursor = null;
            for (var page = 0; page < MaxPages; page++)
            {
                var current = cursor;
                using var result = await RequestAsync(connection, 2 + page, "tools/list", json =>
                {
                    if (current is not null)
                    {
                        json.WriteString("cursor"u8, current);
                    }
                }, bound.Token).ConfigureAwait(false);
                var root = result.RootElement.GetProperty("result");
                if (!root.TryGetProperty("tools", out var list) || list.ValueKind != JsonValueKind.Array)
                {
                    throw new UpstreamException($"{connector.Name}: the tools/list result has no \"tools\" array");
                }
                foreach (var tool in list.EnumerateArray())
                {
                    if (tool.ValueKind == JsonValueKind.Object && tool.TryGetProperty("name", out var name) && name.ValueKind == JsonValueKind.String)
                    {
                        tools.Add(tool.Clone());
                    }
                }
                cursor = root.TryGetProperty("nextCursor", out var next) && next.ValueKind == JsonValueKind.String ? next.GetString() : null;
                if (cursor is null)
                {
                    return tools;
                }
            }
            throw new UpstreamException($"{connector.Name}: tools/list still had more pages after {MaxPages}");
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new UpstreamException($"{connector.Name}: no complete tools/list within {timeout.TotalSeconds:0.###} s");
        }
        finally
        {
            if (connection is not null)
            {
                await connection.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    /// <summary>Sends a request and waits for its answer, skipping whatever else the server says; the answer's document (with <c>result</c>).</summary>
    private static async Task<JsonDocument> RequestAsync(IUpstreamConnection connection, int id, string method, Action<Utf8JsonWriter> writeParams,
        CancellationToken cancellationToken)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var json = new Utf8JsonWriter(buffer, s_json))
        {
            json.WriteStartObject();
            json.WriteString("jsonrpc"u8, "2.0"u8);
            json.WriteNumber("id"u8, id);
            json.WriteString("method"u8, method);
            json.WriteStartObject("params"u8);
            writeParams(json);
            json.WriteEndObject();
            json.WriteEndObject();
        }
        await connection.SendAsync(new ReadOnlySequence<byte>(buffer.WrittenMemory), id, cancellationToken).ConfigureAwait(false);
        while (await connection.Events.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
        {
            while (connection.Events.TryRead(out var ev))
            {
                if (ev.Kind == UpstreamEventKind.SendFailed)
                {
                    throw new UpstreamException($"{method}: {ev.Error ?? "the upstream did not take the request"}");
                }
                JsonDocument document;
                try
                {
                    document = JsonDocument.Parse(ev.Payload);
                }
                catch (JsonException)
                {
                    continue; // not ours to judge here: the catalogue only wants its answer
                }
                var root = document.RootElement;
                if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("id", out var answerId) || answerId.ValueKind != JsonValueKind.Number
                    || answerId.GetInt32() != id || root.TryGetProperty("method", out _))
                {
                    document.Dispose();
                    continue;
                }
                if (root.TryGetProperty("error", out var error))
                {
                    var message = error.TryGetProperty("message", out var m) && m.ValueKind == JsonValueKind.String ? m.GetString() : error.GetRawText();
                    document.Dispose();
                    throw new UpstreamException($"{method} refused: {message}");
                }
                if (!root.TryGetProperty("result", out _))
                {
                    document.Dispose();
                    throw new UpstreamException($"{method}: the answer has no result");
                }
                return document;
            }
        }
        await connection.Completion.ConfigureAwait(false);
        throw new UpstreamException($"{method}: the upstream closed the session before it answered");
    }
}
