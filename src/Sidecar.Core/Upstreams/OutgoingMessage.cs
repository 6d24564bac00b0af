using System.Buffers;
using System.Threading.Channels;

namespace Sidecar.Upstreams;

/// <summary>A message waiting for a connection's single writer: a pooled copy (returned after writing) and its correlation.</summary>
internal readonly record struct OutgoingMessage(byte[] Buffer, int Length, long Correlation)
{
    /// <summary>
    /// The slow path of an enqueue, when the bounded queue is full: waits for room. If the queue closes or the caller
    /// gives up, the pooled buffer goes back and the caller gets <paramref name="closed"/> or the cancellation.
    /// </summary>
    public static async ValueTask WriteSlowAsync(ChannelWriter<OutgoingMessage> writer, OutgoingMessage item,
        Func<UpstreamException> closed, CancellationToken cancellationToken)
    {
        try
        {
            await writer.WriteAsync(item, cancellationToken).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
            ArrayPool<byte>.Shared.Return(item.Buffer);
            throw closed();
        }
        catch (OperationCanceledException)
        {
            ArrayPool<byte>.Shared.Return(item.Buffer);
            throw;
        }
    }
}
