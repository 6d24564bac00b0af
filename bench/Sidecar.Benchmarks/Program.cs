using BenchmarkDotNet.Running;
using Sidecar.Benchmarks.EndToEnd;

namespace Sidecar.Benchmarks;

public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "alloc-profile")
        {
            return AllocationProfile.Run(args[1..]);
        }
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        return 0;
    }
}
