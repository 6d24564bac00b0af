using System.Diagnostics;
using System.Diagnostics.Metrics;
using Sidecar.Decisions;

namespace Sidecar.Metrics;

/// <summary>
/// The gateway's measurements, on its own <see cref="Meter"/> (<see cref="MeterName"/>; one per gateway, so that two
/// gateways in one process, as in tests, never mix). The instruments are named as Prometheus shows them. Those on a
/// call's path (<see cref="ToolCalls"/>, <see cref="Overhead"/>, <see cref="Upstream"/>) take tags the gateway already
/// holds as strings (the server's name, the policy's own tool names, fixed decision names): recording one allocates
/// nothing. The rest are observed at scrape time from counters the gateway keeps anyway.
/// </summary>
public sealed class GatewayMetrics : IDisposable
{
    public const string MeterName = "Sidecar";

    /// <summary>The <c>tool</c> label of a tool the policy does not name: keeps the label's values bounded.</summary>
    public const string OtherTool = "other";

    /// <summary>Histogram buckets for per-call times, in seconds: 10 µs to 10 s.</summary>
    public static readonly double[] SecondsBuckets =
        [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

    public GatewayMetrics()
    {
        Meter = new Meter(MeterName, typeof(GatewayMetrics).Assembly.GetName().Version?.ToString());
        ToolCalls = Meter.CreateCounter<long>("sidecar_tool_calls_total", description: "tools/call decisions by server, tool (the policy's own names, else \"other\") and decision");
        Overhead = Meter.CreateHistogram<double>("sidecar_overhead_seconds", "s",
            "Time inside Sidecar per forwarded call: from the session taking the call to its forwarding, plus from the upstream's answer to its hand-off to the transport",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = SecondsBuckets });
        Upstream = Meter.CreateHistogram<double>("sidecar_upstream_seconds", "s", "Upstream time per forwarded call, from forwarding to the upstream's answer",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = SecondsBuckets });
        UpstreamErrors = Meter.CreateCounter<long>("sidecar_upstream_errors_total", description: "Calls an upstream failed: kind unavailable (unreachable, crashed, closed) or timeout");
        UpstreamRestarts = Meter.CreateCounter<long>("sidecar_upstream_restarts_total", description: "Upstream connections re-made (a stdio server respawned, an HTTP session reconnected)");
        SharedRoundTrip = Meter.CreateHistogram<double>("sidecar_shared_limits_roundtrip_seconds", "s",
            "Round trips to the shared rate-limit store (Redis): one per decision that needs a shared counter, one per refund",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = SecondsBuckets });
    }

    /// <summary>Round trips to Redis (<c>rateLimits.store: redis</c>); unused with the memory store.</summary>
    public Histogram<double> SharedRoundTrip { get; }

    public Meter Meter { get; }

    public Counter<long> ToolCalls { get; }

    public Histogram<double> Overhead { get; }

    public Histogram<double> Upstream { get; }

    public Counter<long> UpstreamErrors { get; }

    public Counter<long> UpstreamRestarts { get; }

    /// <summary>One decided <c>tools/call</c>. <paramref name="tool"/> must be the policy's own string or <see cref="OtherTool"/>.</summary>
    public void RecordCall(string server, string tool, DecisionOutcome decision)
    {
        if (ToolCalls.Enabled)
        {
            ToolCalls.Add(1, new KeyValuePair<string, object?>("server", server), new KeyValuePair<string, object?>("tool", tool),
                new KeyValuePair<string, object?>("decision", decision.ToWireName()));
        }
    }

    /// <summary>A forwarded call's answer: Sidecar's own time and the upstream's, from <see cref="Stopwatch"/> ticks.</summary>
    public void RecordForwarded(string server, long overheadTicks, long upstreamTicks)
    {
        if (Overhead.Enabled)
        {
            Overhead.Record(overheadTicks / (double)Stopwatch.Frequency);
        }
        if (Upstream.Enabled)
        {
            Upstream.Record(upstreamTicks / (double)Stopwatch.Frequency, new KeyValuePair<string, object?>("server", server));
        }
    }

    /// <summary>A call an upstream failed (<paramref name="kind"/>: <c>unavailable</c> or <c>timeout</c>).</summary>
    public void RecordUpstreamError(string server, string kind)
        => UpstreamErrors.Add(1, new KeyValuePair<string, object?>("server", server), new KeyValuePair<string, object?>("kind", kind));

    public void RecordRestart(string server) => UpstreamRestarts.Add(1, new KeyValuePair<string, object?>("server", server));

    public void Dispose() => Meter.Dispose();
}
