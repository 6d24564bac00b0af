using System.Diagnostics.Tracing;
using System.Globalization;

namespace Sidecar.Benchmarks.EndToEnd;

/// <summary>
/// Where the end-to-end bytes go, by type: runs <see cref="EndToEndBenchmarks"/>' setup for one target, then a fixed
/// number of calls while an <see cref="EventListener"/> collects the runtime's <c>GCAllocationTick</c> events (one
/// sample each time ~100 KB have been allocated, attributed to the type being allocated then: over many calls the
/// share of samples per type approaches its share of the bytes). Also prints the exact total per call from
/// <see cref="GC.GetTotalAllocatedBytes(bool)"/>. Not a BenchmarkDotNet benchmark:
/// <c>dotnet run -c Release --project bench/Sidecar.Benchmarks -- alloc-profile HttpJson 50000</c>.
/// </summary>
public static class AllocationProfile
{
    private const int MaxCalls = 10_000_000;

    public static int Run(string[] args)
    {
        if (args.Length < 1 || !Enum.TryParse<E2ETarget>(args[0], ignoreCase: true, out var target))
        {
            Console.Error.WriteLine($"usage: alloc-profile <{string.Join('|', Enum.GetNames<E2ETarget>())}> [calls]");
            return 2;
        }
        var calls = args.Length > 1 ? Math.Clamp(int.Parse(args[1], CultureInfo.InvariantCulture), 1, MaxCalls) : 50_000;

        var bench = new EndToEndBenchmarks { Target = target };
        bench.Setup();
        try
        {
            for (var i = 0; i < 2_000; i++)
            {
                bench.ToolsCall();
            }
            using var listener = new AllocationListener();
            var before = GC.GetTotalAllocatedBytes(precise: true);
            for (var i = 0; i < calls; i++)
            {
                bench.ToolsCall();
            }
            var total = GC.GetTotalAllocatedBytes(precise: true) - before;
            listener.Dispose();

            Console.WriteLine($"{target}: {calls} calls, {total / (double)calls:0.0} bytes allocated per call (all threads)");
            var samples = listener.Snapshot();
            var sampled = samples.Sum(s => s.Value.Bytes);
            Console.WriteLine($"{samples.Sum(s => s.Value.Count)} allocation samples; share of sampled bytes, estimated bytes per call:");
            foreach (var (type, (count, bytes)) in samples.OrderByDescending(s => s.Value.Bytes).Take(40))
            {
                Console.WriteLine($"  {bytes * 100.0 / sampled,5:0.0}%  {bytes / (double)sampled * total / calls,7:0.0} B  {count,6}  {type}");
            }
        }
        finally
        {
            bench.Cleanup();
        }
        return 0;
    }

    private sealed class AllocationListener : EventListener
    {
        private const EventKeywords GcKeyword = (EventKeywords)0x1;
        private readonly Dictionary<string, (int Count, long Bytes)> _byType = [];
        private readonly Lock _gate = new();

        public Dictionary<string, (int Count, long Bytes)> Snapshot()
        {
            lock (_gate)
            {
                return new Dictionary<string, (int Count, long Bytes)>(_byType);
            }
        }

        protected override void OnEventSourceCreated(EventSource eventSource)
        {
            if (eventSource.Name == "Microsoft-Windows-DotNETRuntime")
            {
                EnableEvents(eventSource, EventLevel.Verbose, GcKeyword);
            }
        }

        protected override void OnEventWritten(EventWrittenEventArgs eventData)
        {
            if (eventData.EventName is not { } name || !name.StartsWith("GCAllocationTick", StringComparison.Ordinal) || eventData.Payload is null)
            {
                return;
            }
            var typeIndex = eventData.PayloadNames!.IndexOf("TypeName");
            var amountIndex = eventData.PayloadNames.IndexOf("AllocationAmount64");
            var type = typeIndex >= 0 ? eventData.Payload[typeIndex] as string ?? "?" : "?";
            var amount = amountIndex >= 0 ? Convert.ToInt64(eventData.Payload[amountIndex], CultureInfo.InvariantCulture) : 100_000;
            lock (_gate)
            {
                _byType[type] = _byType.TryGetValue(type, out var seen) ? (seen.Count + 1, seen.Bytes + amount) : (1, amount);
            }
        }
    }
}
