using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Diagnosers;
using BenchmarkDotNet.Jobs;

namespace Sidecar.Benchmarks;

/// <summary>
/// The one job every benchmark runs with: 1 process launch, 3 warmup and 8 measured iterations (BenchmarkDotNet's
/// default is 15+ of each; this keeps the whole suite to a few minutes on a 2-core machine while leaving enough
/// iterations for a meaningful StdDev). Applied with <c>[Config(typeof(BenchConfig))]</c>, so no <c>--job</c> is needed.
/// </summary>
public sealed class BenchConfig : ManualConfig
{
    public BenchConfig()
    {
        AddJob(Job.Default
            .WithLaunchCount(1)
            .WithWarmupCount(3)
            .WithIterationCount(8)
            .WithId("Short8"));
        AddDiagnoser(MemoryDiagnoser.Default);
    }
}

/// <summary>
/// The end-to-end job: like <see cref="BenchConfig"/>, but with a fixed 2,048 calls per iteration (a round trip takes
/// ~100–300 µs here, so 0.2–0.6 s per iteration) instead of BenchmarkDotNet's pilot stage, whose estimate a busy
/// shared machine throws off.
/// </summary>
public sealed class EndToEndConfig : ManualConfig
{
    public EndToEndConfig()
    {
        AddJob(Job.Default
            .WithLaunchCount(1)
            .WithWarmupCount(3)
            .WithIterationCount(8)
            .WithInvocationCount(2048)
            .WithUnrollFactor(1)
            .WithId("E2E"));
        AddDiagnoser(MemoryDiagnoser.Default);
    }
}
