using Sidecar.Upstreams;

namespace Sidecar.Tests.Upstreams;

public class UpstreamEventSinkTests
{
    private static readonly UpstreamEvent One = Message(1);

    private static UpstreamEvent Message(long correlation) => new(UpstreamEventKind.Message, new byte[] { 1 }, correlation);

    [Fact]
    public async Task A_waiting_reader_wakes_for_an_event()
    {
        var sink = new UpstreamEventSink();
        using var lifetime = new CancellationTokenSource();
        var wait = sink.Reader.WaitToReadAsync(lifetime.Token);
        Assert.False(wait.IsCompleted);
        Assert.True(await sink.EmitAsync(Message(1)));
        Assert.True(await wait);
        Assert.True(sink.Reader.TryRead(out var e));
        Assert.Equal(1, e.Correlation);
    }

    [Fact]
    public async Task ReadAllAsync_yields_in_order_and_ends_when_the_connection_closes()
    {
        var sink = new UpstreamEventSink();
        var reading = Task.Run(async () =>
        {
            var seen = new List<long>();
            await foreach (var e in sink.Reader.ReadAllAsync(CancellationToken.None))
            {
                seen.Add(e.Correlation);
            }
            return seen;
        });
        for (var i = 1; i <= 50; i++)
        {
            Assert.True(await sink.EmitAsync(Message(i)));
        }
        Assert.True(sink.TryEmit(Message(51)));
        sink.Close(null);
        Assert.Equal(Enumerable.Range(1, 51).Select(i => (long)i), await reading);
        await sink.Completion;
        await sink.Reader.Completion;
        Assert.False(await sink.EmitAsync(Message(52)));
    }

    [Fact]
    public async Task A_cancelled_wait_throws_and_a_later_wait_works()
    {
        var sink = new UpstreamEventSink();
        using var lifetime = new CancellationTokenSource();
        var wait = sink.Reader.WaitToReadAsync(lifetime.Token);
        await lifetime.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await wait);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await sink.Reader.ReadAsync(lifetime.Token));

        var next = sink.Reader.ReadAsync(CancellationToken.None);
        Assert.True(await sink.EmitAsync(Message(9)));
        Assert.Equal(9, (await next).Correlation);
    }

    [Fact]
    public async Task A_full_channel_makes_writers_wait_until_the_reader_catches_up()
    {
        var sink = new UpstreamEventSink();
        for (var i = 0; i < UpstreamEventSink.Capacity; i++)
        {
            Assert.True(sink.TryEmit(Message(i)));
        }
        Assert.False(sink.TryEmit(Message(-1)));
        var blocked = sink.EmitAsync(Message(UpstreamEventSink.Capacity)).AsTask();
        Assert.False(blocked.IsCompleted);

        var count = 0;
        long last = -1;
        while (count <= UpstreamEventSink.Capacity && await sink.Reader.WaitToReadAsync(CancellationToken.None))
        {
            while (sink.Reader.TryRead(out var e))
            {
                Assert.Equal(last + 1, e.Correlation);
                last = e.Correlation;
                count++;
            }
            if (count == UpstreamEventSink.Capacity)
            {
                Assert.True(await blocked);
            }
        }
        Assert.Equal(UpstreamEventSink.Capacity + 1, count);
    }

    [Fact]
    public void Waiting_for_events_allocates_nothing_once_warm()
    {
        var sink = new UpstreamEventSink();
        using var lifetime = new CancellationTokenSource();
        var total = 0L;
        for (var i = 0; i < 50; i++)
        {
            total += Cycle(sink, lifetime.Token, 100); // warm up: tiered compilation, the queues' first segments
        }

        var before = GC.GetAllocatedBytesForCurrentThread();
        total += Cycle(sink, lifetime.Token, 10_000);
        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.Equal(0, allocated);
        Assert.Equal(15_000, total);
    }

    /// <summary>Waits that are already satisfied (the same thread writes, then waits): the synchronous path.</summary>
    private static long Cycle(UpstreamEventSink sink, CancellationToken lifetime, int count)
    {
        var read = 0L;
        var e = One;
        for (var i = 0; i < count; i++)
        {
            sink.TryEmit(e);
            var wait = sink.Reader.WaitToReadAsync(lifetime);
            if (wait.IsCompletedSuccessfully && wait.Result && sink.Reader.TryRead(out var got))
            {
                read += got.Correlation;
            }
        }
        return read;
    }
}
