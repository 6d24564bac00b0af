using System.Collections.Concurrent;
using System.Runtime.CompilerServices;

namespace Sidecar.RateLimiting;

/// <summary>Identifies one bucket: a counter in a counter space (usually one upstream server), for one scope key.</summary>
/// <remarks>A record struct over existing strings: looking one up allocates nothing.</remarks>
public readonly record struct BucketKey(string Space, string Counter, byte Scope, string? Part1, string? Part2);

/// <summary>
/// One token bucket, stored as a single <see cref="long"/>: the GCRA "theoretical arrival time" in timestamp ticks.
/// A bucket whose TAT is at or before now is full, exactly like a bucket that doesn't exist, which is what makes
/// idle eviction safe.
/// </summary>
public sealed class RateBucket
{
    internal const long Tombstone = long.MinValue;
    internal long Tat;
}

public enum AcquireStatus : byte { Acquired, Rejected, Never }

/// <summary>The outcome of one acquire: whether it was admitted, tokens left and when to retry.</summary>
public readonly record struct AcquireResult(AcquireStatus Status, long Remaining, long RetryAfterTicks)
{
    public bool Acquired => Status == AcquireStatus.Acquired;
}

/// <summary>
/// Lock-free token buckets (GCRA). A limit of <c>max</c> per <c>window</c> is a bucket holding <c>max</c> tokens that
/// refills continuously, one token every <c>window / max</c>: a burst of at most <c>max</c>, then a steady rate.
/// Each acquire is one compare-and-swap on the bucket's <see cref="long"/>; concurrent callers never admit more than
/// the bucket holds. Buckets live here, outside compiled policies, so a policy reload keeps every counter.
/// </summary>
public sealed class RateLimitStore
{
    private static readonly Func<BucketKey, RateBucket> s_create = static _ => new RateBucket();
    private readonly ConcurrentDictionary<BucketKey, RateBucket> _buckets = new();
    private readonly TimeProvider _time;
    private readonly long _frequency;
    private long _count;

    public RateLimitStore(TimeProvider? timeProvider = null, int maxBuckets = 1_000_000)
    {
        _time = timeProvider ?? TimeProvider.System;
        _frequency = _time.TimestampFrequency;
        MaxBuckets = maxBuckets;
    }

    /// <summary>Upper bound on live buckets; past it (after an eviction sweep) new scope keys are refused.</summary>
    public int MaxBuckets { get; }

    /// <summary>Number of live buckets.</summary>
    public long Count => Volatile.Read(ref _count);

    public long Now => _time.GetTimestamp();

    public long TimestampFrequency => _frequency;

    /// <summary>Ticks per token for a limit of <paramref name="max"/> per <paramref name="windowSeconds"/>, rounded up (never faster than configured).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public long EmissionTicks(long max, long windowSeconds)
    {
        var windowTicks = windowSeconds * _frequency;
        return Math.Max(1, (windowTicks + max - 1) / max);
    }

    public long TicksToMilliseconds(long ticks) => ticks <= 0 ? 0 : (long)Math.Ceiling(ticks * 1000.0 / _frequency);

    /// <summary>Finds or creates the bucket for <paramref name="key"/>; null when the store is full.</summary>
    public RateBucket? GetBucket(in BucketKey key)
    {
        if (_buckets.TryGetValue(key, out var bucket))
        {
            return bucket;
        }
        return AddBucket(key);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private RateBucket? AddBucket(BucketKey key)
    {
        if (Volatile.Read(ref _count) >= MaxBuckets)
        {
            Sweep();
            if (Volatile.Read(ref _count) >= MaxBuckets)
            {
                return _buckets.TryGetValue(key, out var existing) ? existing : null;
            }
        }
        var bucket = s_create(key);
        if (_buckets.TryAdd(key, bucket))
        {
            Interlocked.Increment(ref _count);
            return bucket;
        }
        return _buckets.TryGetValue(key, out var raced) ? raced : GetBucket(key);
    }

    /// <summary>
    /// Takes <paramref name="cost"/> tokens from the bucket for <paramref name="key"/> if it holds them.
    /// Never blocks and never queues: a caller that can't be admitted learns when it could be.
    /// </summary>
    public AcquireResult TryAcquire(in BucketKey key, long max, long windowSeconds, long cost, long now, out RateBucket? charged)
    {
        var emission = EmissionTicks(max, windowSeconds);
        var tolerance = emission * max;
        while (true)
        {
            var bucket = GetBucket(key);
            if (bucket is null)
            {
                // Too many distinct scope keys: fail closed rather than grow without bound.
                charged = null;
                return new AcquireResult(AcquireStatus.Rejected, 0, emission);
            }
            var result = TryAcquire(bucket, emission, tolerance, max, cost, now);
            if (result.Status != AcquireStatus.Rejected || Volatile.Read(ref bucket.Tat) != RateBucket.Tombstone)
            {
                charged = result.Acquired ? bucket : null;
                return result;
            }
            // The sweeper retired this bucket between our lookup and our CAS: help remove it and retry on a fresh one.
            Remove(key, bucket);
        }
    }

    /// <summary>GCRA on one bucket. Returns Rejected with RetryAfterTicks = -1 if the bucket was retired.</summary>
    internal static AcquireResult TryAcquire(RateBucket bucket, long emission, long tolerance, long max, long cost, long now)
    {
        if (cost > max)
        {
            return new AcquireResult(AcquireStatus.Never, AvailableTokens(Volatile.Read(ref bucket.Tat), emission, tolerance, now), -1);
        }
        var increment = cost * emission;
        while (true)
        {
            var tat = Volatile.Read(ref bucket.Tat);
            if (tat == RateBucket.Tombstone)
            {
                return new AcquireResult(AcquireStatus.Rejected, 0, -1);
            }
            var start = tat > now ? tat : now;
            var newTat = start + increment;
            var ahead = newTat - now;
            if (ahead > tolerance)
            {
                return new AcquireResult(AcquireStatus.Rejected, (tolerance - (start - now)) / emission, ahead - tolerance);
            }
            if (Interlocked.CompareExchange(ref bucket.Tat, newTat, tat) == tat)
            {
                return new AcquireResult(AcquireStatus.Acquired, (tolerance - ahead) / emission, 0);
            }
        }
    }

    private static long AvailableTokens(long tat, long emission, long tolerance, long now)
    {
        if (tat == RateBucket.Tombstone || tat <= now)
        {
            return tolerance / emission;
        }
        return Math.Max(0, (tolerance - (tat - now)) / emission);
    }

    /// <summary>Gives back tokens taken for a call that then failed upstream.</summary>
    public void Refund(RateBucket bucket, long max, long windowSeconds, long cost)
    {
        if (cost <= 0)
        {
            return;
        }
        var decrement = cost * EmissionTicks(max, windowSeconds);
        while (true)
        {
            var tat = Volatile.Read(ref bucket.Tat);
            if (tat == RateBucket.Tombstone)
            {
                return; // retired: it was already full
            }
            if (Interlocked.CompareExchange(ref bucket.Tat, tat - decrement, tat) == tat)
            {
                return;
            }
        }
    }

    /// <summary>
    /// Retires every full bucket (TAT at or before now): they are indistinguishable from absent ones. One sweep serves
    /// all partitions; call it from a single periodic heartbeat (the gateway's).
    /// </summary>
    public int Sweep()
    {
        var now = _time.GetTimestamp();
        var removed = 0;
        foreach (var (key, bucket) in _buckets)
        {
            var tat = Volatile.Read(ref bucket.Tat);
            if (tat != RateBucket.Tombstone && tat <= now
                && Interlocked.CompareExchange(ref bucket.Tat, RateBucket.Tombstone, tat) == tat)
            {
                removed += Remove(key, bucket) ? 1 : 0;
            }
            else if (tat == RateBucket.Tombstone)
            {
                removed += Remove(key, bucket) ? 1 : 0;
            }
        }
        return removed;
    }

    private bool Remove(BucketKey key, RateBucket bucket)
    {
        if (_buckets.TryRemove(new KeyValuePair<BucketKey, RateBucket>(key, bucket)))
        {
            Interlocked.Decrement(ref _count);
            return true;
        }
        return false;
    }
}
