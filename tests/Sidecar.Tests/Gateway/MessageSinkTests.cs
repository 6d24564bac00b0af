using System.Text;
using Sidecar.Sessions;

namespace Sidecar.Tests.Gateway;

public class MessageSinkTests
{
    private static ReadOnlyMemory<byte> Bytes(string text) => Encoding.UTF8.GetBytes(text);

    private static List<string> Drain(MessageSink sink)
    {
        var read = new List<string>();
        while (sink.TryRead(out var message))
        {
            read.Add(Encoding.UTF8.GetString(message.Payload.Span) + (message.IsResponse ? "!" : ""));
        }
        return read;
    }

    [Fact]
    public void One_producer_is_read_in_the_order_it_wrote()
    {
        var sink = new MessageSink(acceptsRelatedMessages: true);
        Assert.True(sink.TryWrite(Bytes("a"), false));
        Assert.True(sink.TryWrite(Bytes("b"), false));
        Assert.Equal(["a", "b"], Drain(sink));

        // The inline slot is used once: what comes after it was read still follows what was queued before.
        Assert.True(sink.TryWrite(Bytes("c"), false));
        Assert.True(sink.TryWrite(Bytes("d"), true));
        Assert.Equal(["c", "d!"], Drain(sink));
    }

    [Fact]
    public async Task A_wait_completes_when_a_message_arrives()
    {
        var sink = new MessageSink(acceptsRelatedMessages: false);
        var wait = sink.WaitToReadAsync(CancellationToken.None);
        Assert.False(wait.IsCompleted);
        sink.TryWrite(Bytes("r"), true);
        Assert.True(await wait);
        Assert.Equal(["r!"], Drain(sink));
    }

    [Fact]
    public async Task A_message_already_there_needs_no_wait()
    {
        var sink = new MessageSink(acceptsRelatedMessages: false);
        sink.TryWrite(Bytes("r"), true);
        var wait = sink.WaitToReadAsync(CancellationToken.None);
        Assert.True(wait.IsCompletedSuccessfully);
        Assert.True(await wait);
    }

    [Fact]
    public async Task Waits_are_reusable()
    {
        var sink = new MessageSink(acceptsRelatedMessages: true);
        for (var i = 0; i < 100; i++)
        {
            var wait = sink.WaitToReadAsync(CancellationToken.None);
            sink.TryWrite(Bytes(i.ToString(System.Globalization.CultureInfo.InvariantCulture)), false);
            Assert.True(await wait);
            Assert.Equal([i.ToString(System.Globalization.CultureInfo.InvariantCulture)], Drain(sink));
        }
    }

    [Fact]
    public async Task A_cancelled_wait_throws_and_the_sink_still_works()
    {
        var sink = new MessageSink(acceptsRelatedMessages: true);
        using var cts = new CancellationTokenSource();
        var wait = sink.WaitToReadAsync(cts.Token);
        await cts.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await wait);

        var again = sink.WaitToReadAsync(CancellationToken.None);
        sink.TryWrite(Bytes("late"), true);
        Assert.True(await again);
        Assert.Equal(["late!"], Drain(sink));
    }

    [Fact]
    public async Task An_already_cancelled_token_fails_at_once()
    {
        var sink = new MessageSink(acceptsRelatedMessages: true);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await sink.WaitToReadAsync(new CancellationToken(canceled: true)));
    }

    [Fact]
    public async Task Complete_ends_the_reader_after_what_is_queued_and_refuses_more()
    {
        var sink = new MessageSink(acceptsRelatedMessages: true);
        var wait = sink.WaitToReadAsync(CancellationToken.None);
        sink.Complete();
        Assert.True(await wait); // woken: the reader looks and finds the end
        Assert.False(await sink.WaitToReadAsync(CancellationToken.None));
        Assert.False(sink.TryWrite(Bytes("x"), false));

        var full = new MessageSink(acceptsRelatedMessages: true);
        full.TryWrite(Bytes("a"), false);
        full.TryWrite(Bytes("b"), false);
        full.Complete();
        Assert.True(await full.WaitToReadAsync(CancellationToken.None));
        Assert.Equal(["a", "b"], Drain(full));
        Assert.False(await full.WaitToReadAsync(CancellationToken.None));
    }

    [Fact]
    public void Past_capacity_the_oldest_queued_messages_are_dropped_and_counted()
    {
        var sink = new MessageSink(acceptsRelatedMessages: true);
        for (var i = 0; i < MessageSink.Capacity + 11; i++)
        {
            Assert.True(sink.TryWrite(Bytes(i.ToString(System.Globalization.CultureInfo.InvariantCulture)), false));
        }
        var read = Drain(sink);
        Assert.Equal(10, sink.Dropped); // the first message sits in the slot; the queue holds Capacity of the rest
        Assert.Equal(MessageSink.Capacity + 1, read.Count);
        Assert.Equal("0", read[0]);
        Assert.Equal("11", read[1]);
        Assert.Equal((MessageSink.Capacity + 10).ToString(System.Globalization.CultureInfo.InvariantCulture), read[^1]);
    }

    [Fact]
    public async Task Concurrent_producers_lose_nothing_and_keep_their_own_order()
    {
        const int Producers = 4;
        const int PerProducer = 1000;
        var sink = new MessageSink(acceptsRelatedMessages: true);
        // Payload [producer, sequence / 256, sequence % 256], built before the race.
        var payloads = Enumerable.Range(0, Producers)
            .Select(p => Enumerable.Range(0, PerProducer).Select(i => new byte[] { (byte)p, (byte)(i / 256), (byte)(i % 256) }).ToArray())
            .ToArray();

        var producers = Enumerable.Range(0, Producers)
            .Select(p => Task.Run(() =>
            {
                foreach (var payload in payloads[p])
                {
                    Assert.True(sink.TryWrite(payload, false));
                }
            }))
            .ToArray();

        var next = new int[Producers];
        var total = 0;
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(1));
        while (total < Producers * PerProducer && await sink.WaitToReadAsync(timeout.Token))
        {
            while (sink.TryRead(out var message))
            {
                var span = message.Payload.Span;
                Assert.Equal(next[span[0]]++, (span[1] * 256) + span[2]);
                total++;
            }
        }
        await Task.WhenAll(producers);
        Assert.Equal(Producers * PerProducer, total);
        Assert.All(next, n => Assert.Equal(PerProducer, n));
        Assert.Equal(0, sink.Dropped);
    }

    [Fact]
    public void Writing_reading_and_waiting_allocate_nothing_once_warm()
    {
        var sink = new MessageSink(acceptsRelatedMessages: true);
        var payload = Bytes("{}");
        var total = 0L;
        for (var i = 0; i < 50; i++)
        {
            total += Cycle(sink, payload, 100); // warm up: tiered compilation, the queues' first segments
        } 

        var before = GC.GetAllocatedBytesForCurrentThread();
        total += Cycle(sink, payload, 10_000);
        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.Equal(0, allocated);
        Assert.Equal(30_000, total);
    }

    /// <summary>Waits that are already satisfied (the same thread writes, then waits): the synchronous path.</summary>
    private static int Cycle(MessageSink sink, ReadOnlyMemory<byte> payload, int count)
    {
        var read = 0;
        for (var i = 0; i < count; i++)
        {
            sink.TryWrite(payload, false);
            sink.TryWrite(payload, true);
            var wait = sink.WaitToReadAsync(CancellationToken.None);
            if (wait.IsCompletedSuccessfully && wait.Result)
            {
                while (sink.TryRead(out _))
                {
                    read++;
                }
            }
        }
        return read;
    }
}
