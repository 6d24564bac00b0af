using System.Buffers;
using System.Text;
using System.Threading.Channels;
using Sidecar.JsonRpc;
using Sidecar.Upstreams;

namespace Sidecar.Tests.TestSupport;

/// <summary>An upstream that answers every request with an empty result; counts what it was sent.</summary>
internal sealed class EchoConnector : IUpstreamConnector
{
    private int _sent;

    public int Sent => Volatile.Read(ref _sent);

    public string Name => "srv";

    public string Transport => "fake";

    public ValueTask<IUpstreamConnection> ConnectAsync(CancellationToken cancellationToken) => new(new Connection(this));

    private sealed class Connection(EchoConnector owner) : IUpstreamConnection
    {
        private readonly Channel<UpstreamEvent> _events = Channel.CreateUnbounded<UpstreamEvent>();
        private readonly TaskCompletionSource _completion = new();

        public string Transport => "fake";

        public ChannelReader<UpstreamEvent> Events => _events.Reader;

        public Task Completion => _completion.Task;

        public ValueTask SendAsync(ReadOnlySequence<byte> message, long correlation, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref owner._sent);
            var bytes = message.ToArray();
            Assert.Equal(ScanStatus.Ok, JsonRpcScanner.Scan(bytes, out var scan));
            if (scan.Kind == JsonRpcMessageKind.Request)
            {
                var id = Encoding.UTF8.GetString(bytes, scan.Id.Start, scan.Id.Length);
                _events.Writer.TryWrite(new UpstreamEvent(UpstreamEventKind.Message,
                    Encoding.UTF8.GetBytes("{\"jsonrpc\":\"2.0\",\"id\":" + id + ",\"result\":{\"content\":[]}}"), correlation));
            }
            return ValueTask.CompletedTask;
        }

        public ValueTask DisposeAsync()
        {
            _events.Writer.TryComplete();
            _completion.TrySetResult();
            return ValueTask.CompletedTask;
        }
    }
}
