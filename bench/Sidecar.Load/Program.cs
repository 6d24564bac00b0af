using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;

namespace Sidecar.Load;

/// <summary>
/// Bounded, loopback-only MCP load generator (Streamable HTTP). One JSON line per run on stdout.
///
///   Sidecar.Load --url http://127.0.0.1:PORT/mcp (--rate R | --concurrency C | --churn | --sse)
///                [--sessions S] [--duration SEC] [--warmup SEC] [--max-requests N] [--calls-per-session K]
///                [--pids PID[,PID…]] [--target NAME] [--scenario NAME] [--tool NAME]
///
/// --rate R        open loop: R calls/s in total, spread round-robin over S sessions; latency is measured from each
///                 call's *scheduled* send time, so a stalled server cannot hide its queueing (no coordinated omission).
/// --concurrency C closed loop: C workers call back to back over S sessions (saturation throughput).
/// --churn         C workers repeat initialize → K calls → DELETE; reports sessions/s too.
/// --sse           as --rate, with every session's GET stream held open for the whole run.
/// --tool          the echo tool's name (default echo; echo__echo through the aggregated endpoint /mcp).
/// --pids          processes whose CPU (utime+stime, their whole process tree) and peak RSS are sampled over the
///                 measured window.
/// Hard caps: the run ends after warmup+duration seconds or max-requests calls, whichever comes first; calls
/// still in flight get 10 s to finish. Only loopback URLs are accepted.
/// </summary>
internal static partial class Program
{
    [LibraryImport("libc", EntryPoint = "usleep")]
    private static partial int USleep(uint microseconds);

    private static readonly double TicksPerNs = Stopwatch.Frequency / 1e9;

    private static long Now() => Stopwatch.GetTimestamp();
    private static long ToNs(long ticks) => (long)(ticks / TicksPerNs);

    private sealed class Options
    {
        public Uri Url = new("http://127.0.0.1:8787/mcp");
        public string Mode = "closed";
        public double Rate;
        public int Concurrency = 1;
        public int Sessions = 1;
        public double Duration = 10;
        public double Warmup = 2;
        public long MaxRequests = 1_000_000;
        public int CallsPerSession = 10;
        public List<int> Pids = [];
        public string Target = "";
        public string Tool = "echo";
        public string Scenario = "";
    }

    private sealed class Stats
    {
        public readonly Histogram Latency = new();   // from scheduled time (open loop) or send time (closed loop)
        public readonly Histogram Service = new();   // from actual send time
        public readonly Histogram OkLatency = new(); // as Latency, successful answers (a result) only
        public readonly Histogram SessionCycle = new(); // churn: initialize … DELETE
        public long Ok, RateLimited, Shed, RpcError, HttpError, Failed, SessionsDone, SessionFailures;
        public long ShedAll; // shed answers over the whole run, warm-up and drain included (to compare with the audit trail)
        public long Started;
        public long InFlight;

        public void Count(Outcome o)
        {
            switch (o)
            {
                case Outcome.Ok: Interlocked.Increment(ref Ok); break;
                case Outcome.RateLimited: Interlocked.Increment(ref RateLimited); break;
                case Outcome.Shed: Interlocked.Increment(ref Shed); break;
                case Outcome.RpcError: Interlocked.Increment(ref RpcError); break;
                case Outcome.HttpError: Interlocked.Increment(ref HttpError); break;
                default: Interlocked.Increment(ref Failed); break;
            }
        }

        /// <summary>Notes every answer, measured or not (only sheds are counted so).</summary>
        public void Seen(Outcome o)
        {
            if (o == Outcome.Shed)
            {
                Interlocked.Increment(ref ShedAll);
            }
        }

        /// <summary>Records one measured call: latency (from schedule or send), service time, outcome.</summary>
        public void Record(Outcome o, long latencyNs, long serviceNs)
        {
            Latency.Record(latencyNs);
            Service.Record(serviceNs);
            if (o == Outcome.Ok)
            {
                OkLatency.Record(latencyNs);
            }
            Count(o);
        }
    }

    // Timestamp from which results count (long.MaxValue during warm-up).
    private static long s_measureFrom = long.MaxValue;
    private static volatile bool s_stop;

    private static bool Measured(long ts) => ts >= Volatile.Read(ref s_measureFrom);

    public static async Task<int> Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "startup")
        {
            return await Startup.RunAsync(args);
        }
        Options o;
        try
        {
            o = Parse(args);
        }
        catch (Exception e) when (e is ArgumentException or FormatException or IndexOutOfRangeException)
        {
            Console.Error.WriteLine($"sidecar-load: {e.Message}");
            return 2;
        }

        var client = new McpClient(o.Url, maxConnections: 4096, timeout: TimeSpan.FromSeconds(10), tool: o.Tool);
        var stats = new Stats();
        using var hard = new CancellationTokenSource(TimeSpan.FromSeconds(o.Warmup + o.Duration + 30)); // absolute wall-clock cap

        // Sessions (not for churn, which makes its own).
        var sessions = new List<string>();
        if (o.Mode != "churn")
        {
            // Opened 8 at a time: a stdio upstream spawns a process per session.
            using var gate = new SemaphoreSlim(8);
            var opening = Enumerable.Range(0, o.Sessions).Select(async _ =>
            {
                await gate.WaitAsync(hard.Token);
                try
                {
                    return await client.OpenSessionAsync(hard.Token);
                }
                catch (Exception e)
                {
                    Console.Error.WriteLine($"sidecar-load: initialize failed: {e.Message}");
                    return null;
                }
                finally
                {
                    gate.Release();
                }
            }).ToList();
            foreach (string? s in await Task.WhenAll(opening))
            {
                if (s is null)
                {
                    Emit(o, stats, 0, 0, 0, 0, 0, 0, error: "initialize failed");
                    return 1;
                }
                sessions.Add(s);
            }
        }

        // SSE: hold each session's GET stream.
        int streamsOpened = 0;
        var streamTasks = new List<Task<bool>>();
        using var streamCts = CancellationTokenSource.CreateLinkedTokenSource(hard.Token);
        if (o.Mode == "sse")
        {
            foreach (string s in sessions)
            {
                streamTasks.Add(client.HoldStreamAsync(s, () => Interlocked.Increment(ref streamsOpened), streamCts.Token));
            }
            long waitUntil = Now() + Stopwatch.Frequency * 3;
            while (Volatile.Read(ref streamsOpened) < sessions.Count && Now() < waitUntil && !streamTasks.All(t => t.IsCompleted))
            {
                await Task.Delay(10);
            }
        }

        // Load.
        Task load = o.Mode switch
        {
            "rate" or "sse" => Task.Factory.StartNew(() => OpenLoop(o, client, sessions, stats), TaskCreationOptions.LongRunning),
            "closed" => Task.WhenAll(Enumerable.Range(0, o.Concurrency).Select(w => ClosedWorker(o, client, sessions[w % sessions.Count], stats))),
            "churn" => Task.WhenAll(Enumerable.Range(0, o.Concurrency).Select(_ => ChurnWorker(o, client, stats, hard.Token))),
            _ => throw new InvalidOperationException(o.Mode),
        };

        await Task.WhenAny(load, Task.Delay(TimeSpan.FromSeconds(o.Warmup)));
        double cpu0 = o.Pids.Count > 0 ? ProcStats.Cpu(o.Pids[0]).Self : 0;
        double tree0 = o.Pids.Count > 0 ? ProcStats.TreeCpu(o.Pids) : 0;
        long t0 = Now();
        Volatile.Write(ref s_measureFrom, t0);
        await Task.WhenAny(load, Task.Delay(TimeSpan.FromSeconds(o.Duration)));
        s_stop = true;
        long t1 = Now();
        await Task.WhenAny(load, Task.Delay(TimeSpan.FromSeconds(10))); // drain in-flight calls
        double cpu1 = o.Pids.Count > 0 ? ProcStats.Cpu(o.Pids[0]).Self : 0;
        double tree1 = o.Pids.Count > 0 ? ProcStats.TreeCpu(o.Pids) : 0;
        long treeRssKb = o.Pids.Count > 0 ? ProcStats.TreeRssKb(o.Pids) : 0;
        long hwmKb = o.Pids.Count > 0 ? ProcStats.StatusKb(o.Pids[0], "VmHWM") : 0;

        int streamsOpenAtEnd = streamTasks.Count(t => !t.IsCompleted);
        await streamCts.CancelAsync();

        // End the sessions so the next run starts clean (stdio upstreams are per session).
        using var closeCts = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        try
        {
            await Task.WhenAll(sessions.Select(s => client.CloseSessionAsync(s, closeCts.Token)));
        }
        catch (Exception)
        {
            // best effort
        }

        Emit(o, stats, ToNs(t1 - t0) / 1e9, cpu1 - cpu0, tree1 - tree0, hwmKb, treeRssKb, streamsOpened, streamsOpenAtEnd,
             sseStreams: o.Mode == "sse");
        return 0;
    }

    private static void OpenLoop(Options o, McpClient client, List<string> sessions, Stats stats)
    {
        long interval = (long)(Stopwatch.Frequency / o.Rate);
        long start = Now();
        long i = 0;
        long deadline = start + (long)((o.Warmup + o.Duration) * Stopwatch.Frequency);
        const int maxInFlight = 4096;
        while (!s_stop)
        {
            long scheduled = start + (i * interval);
            long now = Now();
            if (now >= deadline || Interlocked.Read(ref stats.Started) >= o.MaxRequests)
            {
                break;
            }
            if (now < scheduled)
            {
                long waitUs = ToNs(scheduled - now) / 1000;
                if (waitUs > 150)
                {
                    USleep((uint)(waitUs - 100));
                }
                else
                {
                    Thread.SpinWait(50);
                }
                continue;
            }
            if (Interlocked.Read(ref stats.InFlight) >= maxInFlight)
            {
                USleep(100); // latency keeps counting from the scheduled time
                continue;
            }
            string session = sessions[(int)(i % sessions.Count)];
            i++;
            Interlocked.Increment(ref stats.Started);
            Interlocked.Increment(ref stats.InFlight);
            _ = OneCall(client, session, scheduled, stats);
        }
        // Wait for the calls in flight (bounded by the HttpClient timeout).
        long drainUntil = Now() + Stopwatch.Frequency * 11;
        while (Interlocked.Read(ref stats.InFlight) > 0 && Now() < drainUntil)
        {
            USleep(1000);
        }
    }

    private static async Task OneCall(McpClient client, string session, long scheduled, Stats stats)
    {
        long sent = Now();
        Outcome outcome = await client.CallEchoAsync(session, CancellationToken.None).ConfigureAwait(false);
        long done = Now();
        stats.Seen(outcome);
        if (Measured(scheduled))
        {
            stats.Record(outcome, ToNs(done - scheduled), ToNs(done - sent));
        }
        Interlocked.Decrement(ref stats.InFlight);
    }

    private static async Task ClosedWorker(Options o, McpClient client, string session, Stats stats)
    {
        await Task.Yield();
        while (!s_stop && Interlocked.Increment(ref stats.Started) <= o.MaxRequests)
        {
            long sent = Now();
            Outcome outcome = await client.CallEchoAsync(session, CancellationToken.None).ConfigureAwait(false);
            long done = Now();
            stats.Seen(outcome);
            if (Measured(sent))
            {
                stats.Record(outcome, ToNs(done - sent), ToNs(done - sent));
            }
        }
    }

    private static async Task ChurnWorker(Options o, McpClient client, Stats stats, CancellationToken ct)
    {
        await Task.Yield();
        while (!s_stop && Interlocked.Read(ref stats.Started) < o.MaxRequests)
        {
            long begin = Now();
            string? session = null;
            try
            {
                session = await client.OpenSessionAsync(ct).ConfigureAwait(false);
            }
            catch (Exception)
            {
                // counted below
            }
            if (session is null)
            {
                if (Measured(begin))
                {
                    Interlocked.Increment(ref stats.SessionFailures);
                }
                if (ct.IsCancellationRequested)
                {
                    return;
                }
                continue;
            }
            for (int k = 0; k < o.CallsPerSession; k++)
            {
                Interlocked.Increment(ref stats.Started);
                long sent = Now();
                Outcome outcome = await client.CallEchoAsync(session, CancellationToken.None).ConfigureAwait(false);
                long done = Now();
                stats.Seen(outcome);
                if (Measured(begin))
                {
                    stats.Record(outcome, ToNs(done - sent), ToNs(done - sent));
                }
            }
            try
            {
                await client.CloseSessionAsync(session, ct).ConfigureAwait(false);
            }
            catch (Exception)
            {
                if (Measured(begin))
                {
                    Interlocked.Increment(ref stats.SessionFailures);
                }
                continue;
            }
            if (Measured(begin))
            {
                stats.SessionCycle.Record(ToNs(Now() - begin));
                Interlocked.Increment(ref stats.SessionsDone);
            }
        }
    }

    private static void Emit(Options o, Stats s, double seconds, double cpuUs, double treeCpuUs, long hwmKb, long treeRssKb,
                             int streamsOpened, int streamsOpenAtEnd = 0, bool sseStreams = false, string? error = null)
    {
        // calls/s counts the calls the target served: answered with a result, a rate-limit error (a policy decision,
        // the expected answer of sidecar-trip) or another JSON-RPC error. Calls shed before forwarding (-32015
        // audit_backlog: the audit queue was full) were refused, not served: counted apart (shed, shedPerSec) and left
        // out of calls/s and of the CPU-per-call denominator, so shedding never shows up as throughput.
        long answered = s.Ok + s.RateLimited + s.RpcError;
        using var stdout = Console.OpenStandardOutput();
        using (var w = new Utf8JsonWriter(stdout))
        {
            w.WriteStartObject();
            w.WriteString("target", o.Target);
            w.WriteString("scenario", o.Scenario);
            w.WriteString("mode", o.Mode);
            w.WriteString("url", o.Url.ToString());
            w.WriteNumber("rate", o.Rate);
            w.WriteNumber("concurrency", o.Concurrency);
            w.WriteNumber("sessions", o.Sessions);
            if (error is not null)
            {
                w.WriteString("error", error);
            }
            w.WriteNumber("seconds", Math.Round(seconds, 3));
            w.WriteNumber("ok", s.Ok);
            w.WriteNumber("rateLimited", s.RateLimited);
            w.WriteNumber("shed", s.Shed);
            w.WriteNumber("shedTotal", s.ShedAll);
            w.WriteNumber("rpcErrors", s.RpcError);
            w.WriteNumber("httpErrors", s.HttpError);
            w.WriteNumber("failed", s.Failed);
            w.WriteNumber("callsPerSec", seconds > 0 ? Math.Round(answered / seconds, 1) : 0);
            w.WriteNumber("shedPerSec", seconds > 0 ? Math.Round(s.Shed / seconds, 1) : 0);
            WriteMs(w, "p50Ms", s.Latency.Quantile(0.50));
            WriteMs(w, "p90Ms", s.Latency.Quantile(0.90));
            WriteMs(w, "p99Ms", s.Latency.Quantile(0.99));
            WriteMs(w, "p999Ms", s.Latency.Quantile(0.999));
            WriteMs(w, "maxMs", s.Latency.Count > 0 ? s.Latency.MaxNs : double.NaN);
            WriteMs(w, "serviceP50Ms", s.Service.Quantile(0.50));
            WriteMs(w, "serviceP99Ms", s.Service.Quantile(0.99));
            WriteMs(w, "okP50Ms", s.OkLatency.Quantile(0.50));
            WriteMs(w, "okP99Ms", s.OkLatency.Quantile(0.99));
            long calls = s.Ok + s.RateLimited + s.RpcError + s.HttpError + s.Failed; // not the shed ones (see above)
            w.WriteNumber("cpuUsPerCall", calls > 0 ? Math.Round(cpuUs / calls, 2) : 0);
            w.WriteNumber("treeCpuUsPerCall", calls > 0 ? Math.Round(treeCpuUs / calls, 2) : 0);
            w.WriteNumber("peakRssMb", Math.Round(hwmKb / 1024.0, 1));
            w.WriteNumber("treeRssMb", Math.Round(treeRssKb / 1024.0, 1));
            if (o.Mode == "churn")
            {
                w.WriteNumber("sessionsPerSec", seconds > 0 ? Math.Round(s.SessionsDone / seconds, 1) : 0);
                w.WriteNumber("sessionFailures", s.SessionFailures);
                WriteMs(w, "sessionP50Ms", s.SessionCycle.Quantile(0.50));
                WriteMs(w, "sessionP99Ms", s.SessionCycle.Quantile(0.99));
            }
            if (sseStreams)
            {
                w.WriteNumber("streamsOpened", streamsOpened);
                w.WriteNumber("streamsOpenAtEnd", streamsOpenAtEnd);
            }
            w.WriteEndObject();
        }
        stdout.Write("\n"u8);
    }

    private static void WriteMs(Utf8JsonWriter w, string name, double ns)
    {
        if (double.IsNaN(ns))
        {
            w.WriteNull(name);
        }
        else
        {
            w.WriteNumber(name, Math.Round(ns / 1e6, 3));
        }
    }

    private static Options Parse(string[] args)
    {
        var o = new Options();
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value");
            double Num() => double.Parse(Next(), CultureInfo.InvariantCulture);
            switch (a)
            {
                case "--url": o.Url = new Uri(Next()); break;
                case "--rate": o.Rate = Num(); if (o.Mode != "sse") { o.Mode = "rate"; } break;
                case "--concurrency": o.Concurrency = (int)Num(); if (o.Mode is "rate" or "sse") { throw new ArgumentException("--rate and --concurrency exclude each other"); } break;
                case "--churn": o.Mode = "churn"; break;
                case "--sse": o.Mode = "sse"; break;
                case "--sessions": o.Sessions = (int)Num(); break;
                case "--duration": o.Duration = Num(); break;
                case "--warmup": o.Warmup = Num(); break;
                case "--max-requests": o.MaxRequests = (long)Num(); break;
                case "--calls-per-session": o.CallsPerSession = (int)Num(); break;
                case "--pids": o.Pids = [.. Next().Split(',', StringSplitOptions.RemoveEmptyEntries).Select(p => int.Parse(p, CultureInfo.InvariantCulture))]; break;
                case "--target": o.Target = Next(); break;
                case "--tool": o.Tool = Next(); break;
                case "--scenario": o.Scenario = Next(); break;
                default: throw new ArgumentException($"unknown option {a}");
            }
        }
        if (o.Mode == "sse" && o.Rate <= 0)
        {
            throw new ArgumentException("--sse needs --rate R");
        }
        if (!o.Url.IsLoopback)
        {
            throw new ArgumentException($"{o.Url} is not a loopback address: this generator only targets 127.0.0.1 / ::1");
        }
        if (o.Duration <= 0 || o.Duration > 600 || o.Warmup < 0 || o.Warmup > 60 || o.MaxRequests <= 0)
        {
            throw new ArgumentException("--duration must be in (0, 600] s, --warmup in [0, 60] s, --max-requests > 0");
        }
        if (o.Sessions < 1 || o.Concurrency < 1 || o.Concurrency > 1024 || o.Sessions > 1024)
        {
            throw new ArgumentException("--sessions and --concurrency must be 1..1024");
        }
        return o;
    }
}
