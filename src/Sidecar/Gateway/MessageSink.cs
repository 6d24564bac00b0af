using System.Threading.Channels;

namespace Sidecar.Gateway;

/// <summary>One message on its way to the agent. <see cref="IsResponse"/> marks the answer to one of the agent's requests.</summary>
internal readonly record struct Outbound(ReadOnlyMemory<byte> Payload, bool IsResponse);

/// <summary>
/// Where messages for the agent go: the response of one POST (JSON or SSE), the session's standalone GET stream, or
/// a legacy SSE stream. Producers (the upstream pump, the request handler) only enqueue; the HTTP handler that owns
/// the response is the single writer, so responses are never written concurrently.
/// </summary>
internal sealed class MessageSink
{
    /// <summary>Upper bound on messages waiting for a slow agent; past it the oldest are dropped (and counted).</summary>
    public const int Capacity = 4096;

    private readonly Channel<Outbound> _channel;
    private long _dropped;

    public MessageSink(bool acceptsRelatedMessages)
    {
        AcceptsRelatedMessages = acceptsRelatedMessages;
        _channel = Channel.CreateBounded<Outbound>(new BoundedChannelOptions(Capacity)
        {
            SingleReader = true,
            FullMode = BoundedChannelFullMode.DropOldest,
        }, _ => Interlocked.Increment(ref _dropped));
    }

    /// <summary>True for SSE sinks, which can carry requests and notifications besides the responses.</summary>
    public bool AcceptsRelatedMessages { get; }

    public long Dropped => Interlocked.Read(ref _dropped);

    public ChannelReader<Outbound> Reader => _channel.Reader;

    public bool TryWrite(ReadOnlyMemory<byte> payload, bool isResponse) => _channel.Writer.TryWrite(new Outbound(payload, isResponse));

    public void Complete() => _channel.Writer.TryComplete();
}
