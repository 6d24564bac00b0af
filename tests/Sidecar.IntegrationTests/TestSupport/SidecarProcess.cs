using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace Sidecar.IntegrationTests.TestSupport;

/// <summary>
/// <c>sidecar run --config CONFIG</c> as its own process (<c>dotnet sidecar.dll</c>), as an operator starts it: for
/// what only a process shows (its exit code and standard error, a signal). Killed on dispose if still running.
/// </summary>
public sealed class SidecarProcess : IDisposable
{
    private readonly StringBuilder _stdout = new();
    private readonly StringBuilder _stderr = new();

    private SidecarProcess(Process process)
    {
        Process = process;
        process.OutputDataReceived += (_, e) => Append(_stdout, e.Data);
        process.ErrorDataReceived += (_, e) => Append(_stderr, e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
    }

    public Process Process { get; }

    public string Stdout => Read(_stdout);

    public string Stderr => Read(_stderr);

    /// <summary>Everything it printed, stderr then stdout, for a failing test's message.</summary>
    public string Log => Stderr + Stdout;

    /// <summary>Starts it and returns once <c>/readyz</c> on <paramref name="port"/> answers.</summary>
    public static async Task<SidecarProcess> StartAsync(HttpClient http, string config, int port)
    {
        var gateway = Start(config);
        await gateway.WaitUntilReadyAsync(http, port);
        return gateway;
    }

    public static SidecarProcess Start(string config, IReadOnlyDictionary<string, string>? environment = null)
    {
        var start = new ProcessStartInfo("dotnet")
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
            WorkingDirectory = Path.GetDirectoryName(config)!,
        };
        start.ArgumentList.Add(typeof(Sidecar.Gateway.GatewayHost).Assembly.Location);
        start.ArgumentList.Add("run");
        start.ArgumentList.Add("--config");
        start.ArgumentList.Add(config);
        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[name] = value;
        }
        return new SidecarProcess(Process.Start(start)!);
    }

    /// <summary>Waits until <c>/readyz</c> on <paramref name="port"/> answers; fails if the process exits or after 60 s.</summary>
    public async Task WaitUntilReadyAsync(HttpClient http, int port)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (true)
        {
            Assert.False(Process.HasExited, "the gateway exited: " + Stderr);
            Assert.True(DateTime.UtcNow < deadline, "the gateway did not get ready: " + Stderr);
            try
            {
                using var response = await http.GetAsync(new Uri($"http://127.0.0.1:{port}/readyz"));
                if (response.IsSuccessStatusCode)
                {
                    return;
                }
            }
            catch (HttpRequestException)
            {
                // not listening yet
            }
            await Task.Delay(50);
        }
    }

    /// <summary>Sends a signal (<c>HUP</c>, <c>TERM</c>, …) with <c>kill</c>.</summary>
    public void Signal(string name)
    {
        using var kill = Process.Start("kill", [$"-{name}", Process.Id.ToString(CultureInfo.InvariantCulture)])!;
        Assert.True(kill.WaitForExit(10_000));
        Assert.Equal(0, kill.ExitCode);
    }

    /// <summary>Sends SIGTERM, as systemd and Kubernetes stop a service.</summary>
    public async Task TerminateAsync()
    {
        using var kill = Process.Start("kill", ["-TERM", Process.Id.ToString(CultureInfo.InvariantCulture)]);
        await kill.WaitForExitAsync();
    }

    /// <summary>Waits for the process to exit (at most 60 s, then it is killed and the test fails); returns its exit code.</summary>
    public async Task<int> WaitForExitAsync()
    {
        using var bound = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        try
        {
            await Process.WaitForExitAsync(bound.Token);
        }
        catch (OperationCanceledException)
        {
            Process.Kill(entireProcessTree: true);
            Assert.Fail("the gateway did not exit; stderr:\n" + Stderr);
        }
        Process.WaitForExit(); // the end of the redirected output
        return Process.ExitCode;
    }

    private static void Append(StringBuilder sink, string? line)
    {
        if (line is null)
        {
            return;
        }
        lock (sink)
        {
            sink.AppendLine(line);
        }
    }

    private static string Read(StringBuilder sink)
    {
        lock (sink)
        {
            return sink.ToString();
        }
    }

    public void Dispose()
    {
        if (!Process.HasExited)
        {
            Process.Kill(entireProcessTree: true);
        }
        Process.Dispose();
    }
}
