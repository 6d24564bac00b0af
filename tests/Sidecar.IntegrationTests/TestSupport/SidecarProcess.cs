using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace Sidecar.IntegrationTests.TestSupport;

/// <summary>
/// The gateway as its own process (<c>dotnet sidecar.dll run --config …</c>), for what an in-process host can't show:
/// signals (SIGHUP, SIGTERM, SIGKILL), exit codes, stderr. Killed with its children on dispose.
/// </summary>
public sealed class SidecarProcess : IDisposable
{
    private readonly StringBuilder _log = new();

    private SidecarProcess(Process process)
    {
        Process = process;
        process.ErrorDataReceived += (_, e) => Append(e.Data);
        process.OutputDataReceived += (_, e) => Append(e.Data);
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
    }

    public Process Process { get; }

    /// <summary>Everything it printed (stdout and stderr) so far.</summary>
    public string Log
    {
        get
        {
            lock (_log)
            {
                return _log.ToString();
            }
        }
    }

    /// <summary>Starts it and returns once <c>/readyz</c> on <paramref name="port"/> answers (at most 60 s).</summary>
    public static async Task<SidecarProcess> StartAsync(HttpClient http, string configPath, int port)
    {
        var start = new ProcessStartInfo("dotnet")
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
            WorkingDirectory = Path.GetDirectoryName(configPath)!,
        };
        start.ArgumentList.Add(typeof(Sidecar.Gateway.GatewayHost).Assembly.Location);
        start.ArgumentList.Add("run");
        start.ArgumentList.Add("--config");
        start.ArgumentList.Add(configPath);
        var gateway = new SidecarProcess(Process.Start(start)!);
        var ready = Stopwatch.StartNew();
        while (true)
        {
            Assert.False(gateway.Process.HasExited, "the gateway exited: " + gateway.Log);
            Assert.True(ready.Elapsed < TimeSpan.FromSeconds(60), "the gateway did not get ready: " + gateway.Log);
            try
            {
                using var response = await http.GetAsync(new Uri($"http://127.0.0.1:{port}/readyz"));
                if (response.IsSuccessStatusCode)
                {
                    return gateway;
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

    private void Append(string? line)
    {
        if (line is null)
        {
            return;
        }
        lock (_log)
        {
            _log.AppendLine(line);
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
