using System.Globalization;
using BenchmarkDotNet.Attributes;
using Sidecar.Policy;
using Sidecar.RateLimiting;

namespace Sidecar.Benchmarks;

/// <summary>
/// <see cref="RateLimitStore.TryAcquire(in BucketKey, long, long, long, long, out RateBucket?)"/>: a
/// <see cref="System.Collections.Concurrent.ConcurrentDictionary{TKey, TValue}"/> lookup on a struct key of existing
/// strings, then one compare-and-swap (GCRA). Every acquire reads the clock (<see cref="RateLimitStore.Now"/>) as the
/// decision engine does; <see cref="ClockRead"/> shows that share on its own.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(BenchConfig))]
public class TokenBucketBenchmarks
{
    private const long Day = 86_400;
    private const int ManyKeys = 10_000;

    private RateLimitStore _store = null!;
    private BucketKey _key;
    private BucketKey _exhaustedKey;
    private BucketKey[] _keys = null!;

    [GlobalSetup]
    public void Setup()
    {
        _store = new RateLimitStore();
        _key = new BucketKey(Policies.CounterSpace, "all_calls", (byte)LimitScope.Grant, "agent-1", "grant-1");
        _exhaustedKey = new BucketKey(Policies.CounterSpace, "tiny", (byte)LimitScope.Grant, "agent-1", "grant-1");
        // One token per day: the first acquire takes it, every later one is rejected.
        if (!_store.TryAcquire(_exhaustedKey, 1, Day, 1, _store.Now, out _).Acquired || Rejected())
        {
            throw new InvalidOperationException("the exhausted bucket does not behave as expected");
        }

        _keys = new BucketKey[ManyKeys];
        for (var i = 0; i < _keys.Length; i++)
        {
            var identity = "agent-" + i.ToString("D5", CultureInfo.InvariantCulture);
            _keys[i] = new BucketKey(Policies.CounterSpace, "all_calls", (byte)LimitScope.Identity, identity, null);
            _store.TryAcquire(_keys[i], Policies.HugeMax, Day, 1, _store.Now, out _);
        }
    }

    [Benchmark(Description = "Clock read (RateLimitStore.Now)")]
    public long ClockRead() => _store.Now;

    [Benchmark(Baseline = true, Description = "TryAcquire, one key, uncontended")]
    public bool Acquire() => _store.TryAcquire(_key, Policies.HugeMax, Day, 1, _store.Now, out _).Acquired;

    [Benchmark(Description = "TryAcquire, exhausted bucket (rejected)")]
    public bool Rejected() => _store.TryAcquire(_exhaustedKey, 1, Day, 1, _store.Now, out _).Acquired;

    [Benchmark(OperationsPerInvoke = ManyKeys, Description = "TryAcquire across 10,000 keys")]
    public long AcquireManyKeys()
    {
        long remaining = 0;
        var keys = _keys;
        for (var i = 0; i < keys.Length; i++)
        {
            remaining += _store.TryAcquire(keys[i], Policies.HugeMax, Day, 1, _store.Now, out _).Remaining;
        }
        return remaining;
    }
}

/// <summary>
/// Many threads taking tokens from one bucket (one key, so one cache line and one CAS target). The machine these
/// results come from has 2 cores: 1 thread is the harness baseline, 2 is real contention, 4 adds oversubscription.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(BenchConfig))]
public class TokenBucketContentionBenchmarks
{
    private const long Day = 86_400;
    private const int ContendedOperations = 1 << 18;

    private RateLimitStore _store = null!;
    private BucketKey _key;

    [Params(1, 2, 4)]
    public int Threads { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _store = new RateLimitStore();
        _key = new BucketKey(Policies.CounterSpace, "all_calls", (byte)LimitScope.Grant, "agent-1", "grant-1");
        StartWorkers();
    }

    [GlobalCleanup]
    public void Cleanup() => StopWorkers();

    /// <summary>
    /// <see cref="Threads"/> threads each take <c>2^18 / Threads</c> tokens from one bucket; the result is wall time
    /// divided by all 2^18 acquires, i.e. the inverse of the bucket's throughput under contention.
    /// </summary>
    [Benchmark(OperationsPerInvoke = ContendedOperations, Description = "TryAcquire, one key, contended")]
    public void AcquireContended()
    {
        _start!.SignalAndWait();
        _done!.SignalAndWait();
    }

    // Persistent workers, released by a barrier, so that no thread is created inside the measurement.
    private Thread[] _workers = [];
    private Barrier? _start;
    private Barrier? _done;
    private volatile bool _stopping;

    private void StartWorkers()
    {
        _stopping = false;
        _start = new Barrier(Threads + 1);
        _done = new Barrier(Threads + 1);
        _workers = new Thread[Threads];
        var perThread = ContendedOperations / Threads;
        for (var t = 0; t < _workers.Length; t++)
        {
            _workers[t] = new Thread(() => Work(perThread)) { IsBackground = true, Name = "bucket-worker-" + t };
            _workers[t].Start();
        }
    }

    private void Work(int operations)
    {
        var store = _store;
        var key = _key;
        while (true)
        {
            _start!.SignalAndWait();
            if (_stopping)
            {
                return;
            }
            for (var i = 0; i < operations; i++)
            {
                store.TryAcquire(key, Policies.HugeMax, Day, 1, store.Now, out _);
            }
            _done!.SignalAndWait();
        }
    }

    private void StopWorkers()
    {
        _stopping = true;
        _start?.SignalAndWait();
        foreach (var worker in _workers)
        {
            worker.Join();
        }
        _start?.Dispose();
        _done?.Dispose();
        _start = null;
        _done = null;
    }
}
