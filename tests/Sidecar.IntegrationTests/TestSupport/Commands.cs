using System.Diagnostics;

namespace Sidecar.IntegrationTests.TestSupport;

/// <summary>Runs a helper program (apt-get, a reference parser) to its end, bounded in time.</summary>
public static class Commands
{
    /// <summary>The exit code of <paramref name="file"/> run with <paramref name="args"/>; -1 when there is no such file.</summary>
    public static async Task<int> RunAsync(string file, params string[] args)
    {
        if (!File.Exists(file))
        {
            return -1;
        }
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        using var bound = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        await process.WaitForExitAsync(bound.Token);
        await Task.WhenAll(output, error);
        return process.ExitCode;
    }
}
