using Sidecar.Audit;

namespace Sidecar.Tests.Audit;

public sealed class AuditQueueTests
{
    [Fact]
    public void Concurrent_producers_lose_nothing_that_was_accepted_and_keep_their_own_order()
    {
        const int Producers = 4;
        const int PerProducer = 20_000;
        var queue = new AuditQueue(256, 16);
        var accepted = new long[Producers];
        var seen = new long[Producers];
        var lastSeen = Enumerable.Repeat(-1L, Producers).ToArray();
        var done = 0;
        var outOfOrder = false;

        var consumer = new Thread(() =>
        {
            while (Volatile.Read(ref done) < Producers || queue.Count > 0)
            {
                if (!queue.TryPeek(out var position))
                {
                    Thread.SpinWait(10);
                    continue;
                }
                ref var entry = ref queue.EntryAt(position);
                var producer = (int)entry.ErrorCode;
                outOfOrder |= entry.CallId <= lastSeen[producer];
                lastSeen[producer] = entry.CallId;
                seen[producer]++;
                queue.Release(position);
            }
        });
        consumer.Start();
        var producers = Enumerable.Range(0, Producers).Select(p => new Thread(() =>
        {
            for (var i = 0; i < PerProducer; i++)
            {
                if (queue.TryClaim(out var position, out var buffer))
                {
                    buffer[0] = (byte)p;
                    ref var entry = ref queue.EntryAt(position);
                    entry.ErrorCode = p;
                    entry.CallId = i;
                    queue.Publish(position);
                    accepted[p]++;
                }
            }
            Interlocked.Increment(ref done);
        })).ToList();
        producers.ForEach(t => t.Start());
        producers.ForEach(t => t.Join());
        Assert.True(consumer.Join(TimeSpan.FromSeconds(30)));
        Assert.False(outOfOrder, "a producer's records came out of order");
        Assert.Equal(accepted, seen);
        Assert.True(accepted.Sum() > 0);
    }

    [Fact]
    public void A_full_queue_refuses_at_once_and_accepts_again_after_a_release()
    {
        var queue = new AuditQueue(4, 8);
        for (var i = 0; i < 4; i++)
        {
            Assert.True(queue.TryClaim(out var position, out _));
            queue.Publish(position);
        }
        Assert.False(queue.TryClaim(out _, out _));
        Assert.True(queue.TryPeek(out var first));
        queue.Release(first);
        Assert.True(queue.TryClaim(out var again, out var buffer));
        Assert.Equal(8, buffer.Length);
        queue.Publish(again);
        Assert.Equal(4, queue.Count);
    }

    [Fact]
    public void The_consumer_waits_at_a_claimed_slot_until_it_is_published()
    {
        var queue = new AuditQueue(4, 8);
        Assert.True(queue.TryClaim(out var first, out _));
        Assert.True(queue.TryClaim(out var second, out _));
        queue.Publish(second);
        Assert.False(queue.TryPeek(out _)); // the first is claimed but not yet published
        queue.Publish(first);
        Assert.True(queue.TryPeek(out var position));
        Assert.Equal(first, position);
    }
}
