using System.Diagnostics;
using System.Globalization;
using System.Text.Json;

namespace Sidecar.Load;

/// <summary>
/// Start-up to ready and idle memory of a server binary:
///   Sidecar.Load startup --exe PATH --ready http://127.0.0.1:PORT/readyz [--trials N] [--idle SECONDS] -- ARGS…
/// Each trial starts the process, polls the loopback ready URL every millisecond until it answers 200 (at most 10 s),
/// waits --idle seconds, reads VmRSS (idle RSS) and VmHWM, and kills the process. One JSON line.
/// </summary>
internal static class Startup
{
    public static async Task<int> RunAsync(string[] args)
    {
        string? exe = null;
        Uri? ready = null;
        int trials = 5;
        double idle = 2;
        var childArgs = new List<string>();
        for (int i = 1; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--exe": exe = args[++i]; break;
                case "--ready": ready = new Uri(args[++i]); break;
                case "--trials": trials = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--idle": idle = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--": childArgs.AddRange(args[(i + 1)..]); i = args.Length; break;
                default: Console.Error.WriteLine($"sidecar-load startup: unknown option {args[i]}"); return 2;
            }
        }
        if (exe is null || ready is null || !ready.IsLoopback || trials < 1 || trials > 50 || idle < 0 || idle > 30)
        {
            Console.Error.WriteLine("sidecar-load startup: --exe and a loopback --ready URL are required; --trials 1..50, --idle 0..30");
            return 2;
        }

        using var http = new HttpClient(new SocketsHttpHandler { UseProxy = false, ConnectTimeout = TimeSpan.FromMilliseconds(200) })
        {
            Timeout = TimeSpan.FromSeconds(1),
        };
        var readyMs = new List<double>();
        var idleRssMb = new List<double>();
        var peakRssMb = new List<double>();
        for (int t = 0; t < trials; t++)
        {
            var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (string a in childArgs)
            {
                psi.ArgumentList.Add(a);
            }
            long start = Stopwatch.GetTimestamp();
            using var p = Process.Start(psi)!;
            p.OutputDataReceived += (_, _) => { };
            p.ErrorDataReceived += (_, _) => { };
            p.BeginOutputReadLine();
            p.BeginErrorReadLine();
            double? elapsed = null;
            while (Stopwatch.GetElapsedTime(start) < TimeSpan.FromSeconds(10) && !p.HasExited)
            {
                try
                {
                    using var res = await http.GetAsync(ready);
                    if (res.IsSuccessStatusCode)
                    {
                        elapsed = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                        break;
                    }
                }
                catch (Exception)
                {
                    // not listening yet
                }
                await Task.Delay(1);
            }
            if (elapsed is { } ms)
            {
                readyMs.Add(ms);
                await Task.Delay(TimeSpan.FromSeconds(idle));
                idleRssMb.Add(ProcStats.StatusKb(p.Id, "VmRSS") / 1024.0);
                peakRssMb.Add(ProcStats.StatusKb(p.Id, "VmHWM") / 1024.0);
            }
            try
            {
                p.Kill(entireProcessTree: true);
                await p.WaitForExitAsync(new CancellationTokenSource(TimeSpan.FromSeconds(5)).Token);
            }
            catch (Exception)
            {
                // already gone
            }
        }

        using var stdout = Console.OpenStandardOutput();
        using (var w = new Utf8JsonWriter(stdout))
        {
            w.WriteStartObject();
            w.WriteString("exe", exe);
            w.WriteNumber("trials", trials);
            w.WriteNumber("readyTrials", readyMs.Count);
            WriteStats(w, "readyMs", readyMs);
            WriteStats(w, "idleRssMb", idleRssMb);
            WriteStats(w, "idlePeakRssMb", peakRssMb);
            w.WriteNumber("binaryBytes", new FileInfo(exe).Length);
            w.WriteEndObject();
        }
        stdout.Write("\n"u8);
        return readyMs.Count == trials ? 0 : 1;
    }

    private static void WriteStats(Utf8JsonWriter w, string name, List<double> values)
    {
        w.WriteStartObject(name);
        if (values.Count > 0)
        {
            var sorted = values.Order().ToList();
            w.WriteNumber("min", Math.Round(sorted[0], 2));
            w.WriteNumber("median", Math.Round(sorted[sorted.Count / 2], 2));
            w.WriteNumber("max", Math.Round(sorted[^1], 2));
        }
        w.WriteEndObject();
    }
}
