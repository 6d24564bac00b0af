using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Sidecar.Configuration;

namespace Sidecar.IntegrationTests.TestSupport;

/// <summary>
/// A small Streamable HTTP MCP server (MCP 2025-11-25) on loopback (Kestrel, in process) that closes the SSE stream
/// of a <c>tools/call</c> before the answer and serves the rest of it on a <c>GET</c> with <c>Last-Event-ID</c>, as
/// SEP-1699 ("SSE polling via server-side disconnect") allows. Everything it is sent is recorded for assertions.
/// </summary>
/// <remarks>
/// <para>
/// <c>initialize</c> answers with an <c>Mcp-Session-Id</c> (and echoes the client's protocol version);
/// notifications and responses get 202; <c>tools/list</c> lists the tools below; other requests get -32601.
/// Requests without the session id get 400. A <c>GET</c> without <c>Last-Event-ID</c> is the standalone stream: it
/// gets a keep-alive comment and stays open. <c>DELETE</c> gets 200.
/// </para>
/// <para>
/// Tools: <c>echo</c> answers in one JSON body. <c>slow_echo</c> (<c>message</c>, optional <c>closes</c> = 1 and
/// <c>retry</c> = 200 ms) answers with an event stream: a priming event (<c>id</c>, <c>retry</c>, empty
/// <c>data</c>), a progress notification with an id when the call has a progress token, then the stream is closed
/// (cleanly) without the answer (with <c>closes</c> 0, the answer follows on the POST stream instead; with
/// <c>abort</c> true the connection is aborted instead, once the test calls <see cref="BreakHeldStreams"/>; with
/// <c>forget</c> true the server forgets the stream, and a GET resuming it gets 400). Each GET that resumes it gets a fresh priming event; the <c>closes</c>-th one also
/// gets the JSON-RPC result (original request id), after which the stream ends; earlier ones are closed again.
/// <c>no_id_echo</c> answers with an event stream that has no event id at all (a keep-alive comment and a progress
/// notification) and is closed before the answer, which never comes.
/// </para>
/// </remarks>
public sealed class ResumableMcpServer : IAsyncDisposable
{
    public const string SessionId = "resumable-session-1";

    private readonly WebApplication _app;
    private readonly ConcurrentQueue<Seen> _seen = new();
    private readonly ConcurrentDictionary<string, PollStream> _streams = new();
    private readonly ConcurrentQueue<string> _sentIds = new();
    private readonly ConcurrentQueue<string> _closedStreams = new();
    private readonly TaskCompletionSource _breakHeld = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _nextStream;

    private ResumableMcpServer(WebApplication app, int port)
    {
        _app = app;
        Url = new Uri($"http://127.0.0.1:{port}/mcp");
    }

    /// <summary>One HTTP request as received: the method, the JSON-RPC method of a POST, the MCP headers.</summary>
    public sealed record Seen(string HttpMethod, string? RpcMethod, string? SessionId, string? ProtocolVersion, string? LastEventId, string? Accept, long Timestamp);

    /// <summary>One <c>slow_echo</c> stream: what is still to send, and how often it is still to be closed.</summary>
    private sealed class PollStream(string key, JsonNode requestId, string message, int closes, int retryMs)
    {
        public string Key { get; } = key;

        public JsonNode RequestId { get; } = requestId;

        public string Message { get; } = message;

        public int ClosesLeft { get; set; } = closes;

        public int RetryMs { get; } = retryMs;

        public int NextSequence { get; set; }

        public string LastSentId { get; set; } = "";

        public bool Answered { get; set; }
    }

    public Uri Url { get; }

    /// <summary>Every request so far, in arrival order.</summary>
    public IReadOnlyList<Seen> Requests => [.. _seen];

    /// <summary>The resuming GETs so far (those with <c>Last-Event-ID</c>), in arrival order.</summary>
    public IReadOnlyList<Seen> Resumptions => [.. _seen.Where(s => s.HttpMethod == "GET" && s.LastEventId is not null)];

    /// <summary>Every SSE event id sent so far, in order.</summary>
    public IReadOnlyList<string> SentEventIds => [.. _sentIds];

    /// <summary>When each stream the server closed before its answer was closed (<see cref="Stopwatch"/> ticks).</summary>
    public ConcurrentDictionary<string, long> ClosedAt { get; } = new();

    /// <summary>A config for this server as a Streamable HTTP upstream.</summary>
    public ServerConfig ToServerConfig(string name = "resumable") =>
        new(name, new SourceLocation(1, 1), UpstreamTransport.StreamableHttp,
            null, [], new Dictionary<string, string>(), null, Url, new Dictionary<string, string>(), null);

    public static async Task<ResumableMcpServer> StartAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(2));
        var app = builder.Build();
        ResumableMcpServer? server = null;
        app.Run(context => server!.HandleAsync(context));
        await app.StartAsync();
        server = new ResumableMcpServer(app, new Uri(app.Urls.Single()).Port);
        return server;
    }

    /// <summary>Aborts the connections of the <c>slow_echo</c> calls with <c>abort</c> true (they wait for this).</summary>
    public void BreakHeldStreams() => _breakHeld.TrySetResult();

    /// <summary>Waits (bounded) until the server has closed a stream before its answer.</summary>
    public async Task<string> WaitForEarlyCloseAsync(TimeSpan timeout)
    {
        var deadline = Stopwatch.StartNew();
        while (!_closedStreams.TryPeek(out _))
        {
            if (deadline.Elapsed > timeout)
            {
                throw new TimeoutException($"no stream was closed within {timeout}");
            }
            await Task.Delay(20);
        }
        _closedStreams.TryPeek(out var key);
        return key!;
    }

    private void Record(Seen seen) => _seen.Enqueue(seen);

    private readonly ConcurrentQueue<string> _authorizations = new();

    /// <summary>Every <c>Authorization</c> header value a request carried (requests without one add nothing).</summary>
    public IReadOnlyList<string> AuthorizationHeaders => [.. _authorizations];

    private async Task HandleAsync(HttpContext context)
    {
        var request = context.Request;
        var headers = request.Headers;
        string? Header(string name) => headers.TryGetValue(name, out var v) ? v.ToString() : null;
        if (Header("Authorization") is { } authorization)
        {
            _authorizations.Enqueue(authorization);
        }

        if (HttpMethods.IsGet(request.Method))
        {
            Record(new Seen("GET", null, Header("Mcp-Session-Id"), Header("MCP-Protocol-Version"), Header("Last-Event-ID"), Header("Accept"), Stopwatch.GetTimestamp()));
            if (Header("Mcp-Session-Id") != SessionId)
            {
                context.Response.StatusCode = 400;
                return;
            }
            if (Header("Last-Event-ID") is { } lastEventId)
            {
                await ResumeAsync(context, lastEventId);
                return;
            }
            await StandaloneStreamAsync(context);
            return;
        }
        if (HttpMethods.IsDelete(request.Method))
        {
            Record(new Seen("DELETE", null, Header("Mcp-Session-Id"), Header("MCP-Protocol-Version"), null, null, Stopwatch.GetTimestamp()));
            context.Response.StatusCode = 200;
            return;
        }
        if (!HttpMethods.IsPost(request.Method))
        {
            context.Response.StatusCode = 405;
            return;
        }

        using var reader = new StreamReader(request.Body, Encoding.UTF8);
        var body = JsonNode.Parse(await reader.ReadToEndAsync(context.RequestAborted))!.AsObject();
        var method = body["method"]?.GetValue<string>();
        var id = body["id"];
        Record(new Seen("POST", method, Header("Mcp-Session-Id"), Header("MCP-Protocol-Version"), Header("Last-Event-ID"), Header("Accept"), Stopwatch.GetTimestamp()));

        if (method == "initialize")
        {
            var version = body["params"]?["protocolVersion"]?.GetValue<string>() ?? "2025-11-25";
            context.Response.Headers["Mcp-Session-Id"] = SessionId;
            await WriteJsonAsync(context, Result(id, new JsonObject
            {
                ["protocolVersion"] = version,
                ["capabilities"] = new JsonObject { ["tools"] = new JsonObject() },
                ["serverInfo"] = new JsonObject { ["name"] = "resumable-test-server", ["version"] = "1.0.0" },
            }));
            return;
        }
        if (Header("Mcp-Session-Id") != SessionId)
        {
            context.Response.StatusCode = 400;
            return;
        }
        if (id is null || method is null)
        {
            context.Response.StatusCode = 202; // a notification, or the client's answer to a request of ours
            return;
        }
        switch (method)
        {
            case "tools/list":
                await WriteJsonAsync(context, Result(id, new JsonObject { ["tools"] = ToolList() }));
                return;
            case "tools/call":
                await CallAsync(context, id, body["params"]!.AsObject());
                return;
            case "ping":
                await WriteJsonAsync(context, Result(id, new JsonObject()));
                return;
            default:
                await WriteJsonAsync(context, new JsonObject
                {
                    ["jsonrpc"] = "2.0",
                    ["id"] = id.DeepClone(),
                    ["error"] = new JsonObject { ["code"] = -32601, ["message"] = $"Method not found: {method}" },
                });
                return;
        }
    }

    private static JsonArray ToolList()
    {
        JsonObject Tool(string name, string description, JsonObject properties) => new()
        {
            ["name"] = name,
            ["description"] = description,
            ["inputSchema"] = new JsonObject { ["type"] = "object", ["properties"] = properties },
        };
        JsonObject Text() => new() { ["type"] = "string" };
        JsonObject Number() => new() { ["type"] = "number" };
        JsonObject Flag() => new() { ["type"] = "boolean" };
        return
        [
            Tool("echo", "Echoes the message back", new JsonObject { ["message"] = Text() }),
            Tool("slow_echo", "Echoes the message back after closing the stream (resume with GET + Last-Event-ID)",
                new JsonObject { ["message"] = Text(), ["closes"] = Number(), ["retry"] = Number(), ["abort"] = Flag(), ["forget"] = Flag() }),
            Tool("no_id_echo", "Closes its event stream, which has no event ids, before answering", new JsonObject { ["message"] = Text() }),
        ];
    }

    private async Task CallAsync(HttpContext context, JsonNode id, JsonObject parameters)
    {
        var name = parameters["name"]?.GetValue<string>();
        var arguments = parameters["arguments"] as JsonObject;
        var message = arguments?["message"]?.GetValue<string>() ?? "";
        var progressToken = parameters["_meta"]?["progressToken"];
        switch (name)
        {
            case "echo":
                await WriteJsonAsync(context, EchoResult(id, message));
                return;
            case "slow_echo":
            {
                var closes = arguments?["closes"]?.GetValue<int>() ?? 1;
                var retry = arguments?["retry"]?.GetValue<int>() ?? 200;
                var stream = new PollStream("s" + Interlocked.Increment(ref _nextStream).ToString(CultureInfo.InvariantCulture), id.DeepClone(), message, closes, retry);
                _streams[stream.Key] = stream;
                StartEventStream(context);
                await WriteEventAsync(context, stream, $"retry: {stream.RetryMs}\ndata: \n\n"); // priming: id, retry, empty data
                if (progressToken is not null)
                {
                    var progress = new JsonObject
                    {
                        ["jsonrpc"] = "2.0",
                        ["method"] = "notifications/progress",
                        ["params"] = new JsonObject { ["progressToken"] = progressToken.DeepClone(), ["progress"] = 1, ["total"] = 2 },
                    };
                    await WriteEventAsync(context, stream, $"data: {progress.ToJsonString()}\n\n");
                }
                if (closes <= 0)
                {
                    stream.Answered = true; // no closing at all: the answer follows on this stream
                    await WriteEventAsync(context, stream, $"data: {EchoResult(id, message).ToJsonString()}\n\n");
                    return;
                }
                if (arguments?["forget"]?.GetValue<bool>() == true)
                {
                    _streams.TryRemove(stream.Key, out _); // a resumption will get 400
                }
                CloseEarly(stream);
                if (arguments?["abort"]?.GetValue<bool>() == true)
                {
                    // Broken rather than closed: the chunked body never ends. An abort may reset the connection and lose
                    // bytes the client has not read yet, so it waits for the test, which has seen what was sent.
                    await _breakHeld.Task.WaitAsync(context.RequestAborted);
                    context.Abort();
                }
                return; // ends the response: the stream closes before the answer
            }
            case "no_id_echo":
            {
                StartEventStream(context);
                await context.Response.WriteAsync(": keep-alive\n\n");
                if (progressToken is not null)
                {
                    var progress = new JsonObject
                    {
                        ["jsonrpc"] = "2.0",
                        ["method"] = "notifications/progress",
                        ["params"] = new JsonObject { ["progressToken"] = progressToken.DeepClone(), ["progress"] = 1, ["total"] = 2 },
                    };
                    await context.Response.WriteAsync($"data: {progress.ToJsonString()}\n\n");
                }
                await context.Response.Body.FlushAsync();
                _closedStreams.Enqueue("no-id");
                return;
            }
            default:
                await WriteJsonAsync(context, new JsonObject
                {
                    ["jsonrpc"] = "2.0",
                    ["id"] = id.DeepClone(),
                    ["error"] = new JsonObject { ["code"] = -32602, ["message"] = $"Unknown tool: {name}" },
                });
                return;
        }
    }

    /// <summary>A GET with <c>Last-Event-ID</c>: the rest of the stream that id belongs to.</summary>
    private async Task ResumeAsync(HttpContext context, string lastEventId)
    {
        var dash = lastEventId.LastIndexOf('-');
        if (dash <= 0 || !_streams.TryGetValue(lastEventId[..dash], out var stream) || stream.Answered)
        {
            context.Response.StatusCode = 400;
            await context.Response.WriteAsync("unknown Last-Event-ID");
            return;
        }
        StartEventStream(context);
        await WriteEventAsync(context, stream, $"retry: {stream.RetryMs}\ndata:\n\n"); // priming again
        stream.ClosesLeft--;
        if (stream.ClosesLeft > 0)
        {
            CloseEarly(stream);
            return;
        }
        stream.Answered = true;
        await WriteEventAsync(context, stream, $"event: message\ndata: {EchoResult(stream.RequestId, stream.Message).ToJsonString()}\n\n");
    }

    /// <summary>The standalone GET stream: a keep-alive comment, then open until the client or the server stops.</summary>
    private async Task StandaloneStreamAsync(HttpContext context)
    {
        StartEventStream(context);
        await context.Response.WriteAsync(":\n\n");
        await context.Response.Body.FlushAsync();
        var stopping = context.RequestServices.GetRequiredService<IHostApplicationLifetime>().ApplicationStopping;
        using var both = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted, stopping);
        try
        {
            await Task.Delay(Timeout.Infinite, both.Token);
        }
        catch (OperationCanceledException)
        {
        }
    }

    private void CloseEarly(PollStream stream)
    {
        ClosedAt[stream.LastSentId] = Stopwatch.GetTimestamp();
        _closedStreams.Enqueue(stream.Key);
    }

    private static void StartEventStream(HttpContext context)
    {
        context.Response.StatusCode = 200;
        context.Response.ContentType = "text/event-stream";
        context.Response.Headers.CacheControl = "no-cache";
    }

    private async Task WriteEventAsync(HttpContext context, PollStream stream, string fieldsAndData)
    {
        var eventId = $"{stream.Key}-{stream.NextSequence++}";
        stream.LastSentId = eventId;
        _sentIds.Enqueue(eventId);
        await context.Response.WriteAsync($"id: {eventId}\n{fieldsAndData}");
        await context.Response.Body.FlushAsync();
    }

    private static JsonObject Result(JsonNode? id, JsonObject result) => new()
    {
        ["jsonrpc"] = "2.0",
        ["id"] = id?.DeepClone(),
        ["result"] = result,
    };

    private static JsonObject EchoResult(JsonNode id, string message) => Result(id, new JsonObject
    {
        ["content"] = new JsonArray(new JsonObject { ["type"] = "text", ["text"] = "Echo: " + message }),
    });

    private static async Task WriteJsonAsync(HttpContext context, JsonObject message)
    {
        context.Response.StatusCode = 200;
        context.Response.ContentType = "application/json";
        await context.Response.WriteAsync(message.ToJsonString());
    }

    public async ValueTask DisposeAsync()
    {
        _breakHeld.TrySetResult();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
