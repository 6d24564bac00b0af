using System.Buffers;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Sidecar.JsonRpc;
using Sidecar.Protocol;
using Sidecar.Upstreams;

namespace Sidecar.Tests.TestSupport;

/// <summary>One message the gateway sent upstream, on connection <see cref="Connection"/> (1 = the first).</summary>
internal sealed class SentMessage(int connection, byte[] bytes, long correlation)
{
    public int Connection { get; } = connection;

    public byte[] Bytes { get; } = bytes;

    public long Correlation { get; } = correlation;

    public string Json => Encoding.UTF8.GetString(Bytes);

    public JsonElement Root => JsonDocument.Parse(Bytes).RootElement.Clone();

    public string? Method => Root.TryGetProperty("method", out var method) ? method.GetString() : null;

    /// <summary>The id token as sent (<c>"a"</c>, <c>1.0</c>); null for a notification.</summary>
    public string? IdToken
    {
        get
        {
            Assert.Equal(ScanStatus.Ok, JsonRpcScanner.Scan(Bytes, out var scan));
            return scan.Id.IsEmpty ? null : Encoding.UTF8.GetString(Bytes, scan.Id.Start, scan.Id.Length);
        }
    }

    public bool IsRequest => Root.TryGetProperty("method", out _) && Root.TryGetProperty("id", out _);

    public override string ToString() => $"#{Connection}: {Json}";
}

/// <summary>
/// A fake upstream server the test drives: every connection it opens records what the gateway sends; requests are
/// answered by <see cref="Respond"/> (default: <c>initialize</c> with <see cref="ProtocolVersion"/>, anything else
/// with an empty result; return null to hold a request and answer later with <see cref="ScriptedConnection.Say"/>).
/// A connection can crash (its <see cref="IUpstreamConnection.Completion"/> faulted) and say anything: responses,
/// server-to-client requests, notifications.
/// </summary>
internal sealed class ScriptedUpstream : IUpstreamConnector
{
    private readonly List<ScriptedConnection> _connections = [];
    private readonly List<SentMessage> _sent = [];

    public string Name => "srv";

    public string Transport => "fake";

    /// <summary>The <c>protocolVersion</c> of the default <c>initialize</c> result.</summary>
    public string ProtocolVersion { get; set; } = McpProtocol.V20250618;

    /// <summary>The answer to a request (a whole message), or null to hold it. Null: <see cref="DefaultAnswer"/>.</summary>
    public Func<SentMessage, string?>? Respond { get; set; }

    /// <summary>Thrown by <see cref="ConnectAsync"/> while set.</summary>
    public UpstreamException? ConnectFailure { get; set; }

    public IReadOnlyList<ScriptedConnection> Connections
    {
        get
        {
            lock (_connections)
            {
                return [.. _connections];
            }
        }
    }

    /// <summary>The newest connection.</summary>
    public ScriptedConnection Latest => Connections[^1];

    /// <summary>Everything sent upstream so far, on every connection, in order.</summary>
    public IReadOnlyList<SentMessage> Sent
    {
        get
        {
            lock (_sent)
            {
                return [.. _sent];
            }
        }
    }

    /// <summary>Requests and notifications sent with <paramref name="method"/>.</summary>
    public IReadOnlyList<SentMessage> SentWith(string method) => [.. Sent.Where(m => m.Method == method)];

    public ValueTask<IUpstreamConnection> ConnectAsync(CancellationToken cancellationToken)
    {
        if (ConnectFailure is { } failure)
        {
            throw failure;
        }
        lock (_connections)
        {
            var connection = new ScriptedConnection(this, _connections.Count + 1);
            _connections.Add(connection);
            return new(connection);
        }
    }

    /// <summary>Waits (at most 10 s, then fails) for a message sent upstream that matches <paramref name="match"/>.</summary>
    public async Task<SentMessage> WaitForAsync(Func<SentMessage, bool> match, string what)
    {
        var deadline = Environment.TickCount64 + 10_000;
        while (true)
        {
            if (Sent.FirstOrDefault(match) is { } found)
            {
                return found;
            }
            Assert.True(Environment.TickCount64 < deadline, $"timed out waiting for the upstream to receive {what}; it received: {string.Join(" | ", Sent)}");
            await Task.Delay(5);
        }
    }

    public string? DefaultAnswer(SentMessage request) => request.Method == "initialize"
        ? Result(request, $$$"""{"protocolVersion":"{{{ProtocolVersion}}}","capabilities":{"tools":{}},"serverInfo":{"name":"fake","version":"1.0"}}""")
        : Result(request, "{}");

    /// <summary><c>{"jsonrpc":"2.0","id":ID,"result":RESULT}</c> with the request's own id token.</summary>
    public static string Result(SentMessage request, string result) => $$"""{"jsonrpc":"2.0","id":{{request.IdToken}},"result":{{result}}}""";

    /// <summary>A JSON-RPC error answer to <paramref name="request"/>.</summary>
    public static string Error(SentMessage request, int code, string message)
        => $$$"""{"jsonrpc":"2.0","id":{{{request.IdToken}}},"error":{"code":{{{code}}},"message":"{{{message}}}"}}""";

    internal void Record(SentMessage message)
    {
        lock (_sent)
        {
            _sent.Add(message);
        }
    }
}

/// <summary>One upstream session of a <see cref="ScriptedUpstream"/>.</summary>
internal sealed class ScriptedConnection(ScriptedUpstream owner, int number) : IUpstreamConnection
{
    private readonly Channel<UpstreamEvent> _events = Channel.CreateUnbounded<UpstreamEvent>();
    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private bool _lingering;

    public int Number { get; } = number;

    public string Transport => "fake";

    public ChannelReader<UpstreamEvent> Events => _events.Reader;

    public Task Completion => _completion.Task;

    public bool Disposed { get; private set; }

    public ValueTask SendAsync(ReadOnlySequence<byte> message, long correlation, CancellationToken cancellationToken)
    {
        if (_completion.Task.IsCompleted)
        {
            throw new UpstreamException("the fake connection is closed");
        }
        var sent = new SentMessage(Number, message.ToArray(), correlation);
        Assert.Equal(ScanStatus.Ok, JsonRpcScanner.Scan(sent.Bytes, out _));
        owner.Record(sent);
        if (sent.IsRequest && (owner.Respond ?? owner.DefaultAnswer)(sent) is { } answer)
        {
            Say(answer, correlation);
        }
        return ValueTask.CompletedTask;
    }

    /// <summary>The server says <paramref name="json"/> (a response, a request or a notification), tagged with <paramref name="correlation"/>.</summary>
    public void Say(string json, long correlation = 0)
        => Assert.True(_events.Writer.TryWrite(new UpstreamEvent(UpstreamEventKind.Message, Encoding.UTF8.GetBytes(json), correlation)), "the connection's events have ended");

    /// <summary>The transport could not deliver the message sent with <paramref name="correlation"/> (an HTTP error, say).</summary>
    public void FailSend(long correlation, string error)
        => Assert.True(_events.Writer.TryWrite(new UpstreamEvent(UpstreamEventKind.SendFailed, default, correlation, error)), "the connection's events have ended");

    /// <summary>
    /// The server dies: <see cref="Completion"/> faults with <paramref name="reason"/>. With <paramref name="endEvents"/>
    /// false its event stream stays open (even once disposed) until <see cref="EndEvents"/>: a connection whose
    /// pump notices the end late.
    /// </summary>
    public void Crash(string reason, bool endEvents = true)
    {
        _lingering = !endEvents;
        _completion.TrySetException(new UpstreamException(reason));
        if (endEvents)
        {
            EndEvents();
        }
    }

    public void EndEvents() => _events.Writer.TryComplete();

    public ValueTask DisposeAsync()
    {
        Disposed = true;
        if (!_lingering)
        {
            EndEvents();
        }
        _completion.TrySetResult();
        return ValueTask.CompletedTask;
    }
}
