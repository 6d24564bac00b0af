using System.Diagnostics.Metrics;
using Sidecar.Audit;
using Sidecar.Metrics;

namespace Sidecar.Gateway;

/// <summary>
/// The gauges and totals <c>/metrics</c> reads at scrape time from what the gateway counts anyway (sessions, requests
/// in flight and shed, auth failures, pending approvals, the audit writer, reloads): nothing on a call's path.
/// Registered on the gateway's own meter (<see cref="GatewayMetrics.Meter"/>).
/// </summary>
internal static class GatewayObservables
{
    public static void Register(Gateway gateway)
    {
        var engine = gateway.Engine;
        var meter = engine.Metrics.Meter;
        meter.CreateObservableGauge("sidecar_sessions", () => Sessions(gateway), description: "Open agent sessions by server");
        meter.CreateObservableGauge("sidecar_in_flight_requests", () => engine.InFlight.Count, description: "Agent requests being worked on (limits.maxInFlight caps them)");
        meter.CreateObservableCounter("sidecar_shed_requests_total", () => engine.InFlight.Shed, description: "Agent requests shed with 503 at limits.maxInFlight");
        meter.CreateObservableCounter("sidecar_sessions_refused_total", () => engine.SessionsRefused, description: "New sessions refused at limits.maxSessions, maxSessionsPerServer or maxSessionsPerIdentity");
        meter.CreateObservableCounter("sidecar_auth_failures_total", () => engine.AuthFailures, description: "Requests refused for their credentials (401/403), agent and admin API");
        meter.CreateObservableGauge("sidecar_approvals_pending", () => engine.Approvals.PendingCount, description: "Approvals waiting for a person");
        meter.CreateObservableCounter("sidecar_approval_webhook_retries_total", () => engine.Approvals.Webhook?.Retries ?? 0, description: "Approval webhook deliveries retried");
        meter.CreateObservableCounter("sidecar_approval_webhook_failures_total", () => engine.Approvals.Webhook?.Failed ?? 0, description: "Approval webhook deliveries given up");
        if (gateway.Audit is { } audit)
        {
            var recorder = audit.Recorder;
            meter.CreateObservableGauge("sidecar_audit_queue_depth", () => (long)recorder.Queue!.Count, description: "Audit records waiting for the writer (its backlog)");
            meter.CreateObservableGauge("sidecar_audit_queue_capacity", () => (long)recorder.Queue!.Capacity, description: "Places in the audit queue (audit.bufferEvents)");
            meter.CreateObservableCounter("sidecar_audit_events_total", () => audit.Written, description: "Audit events written to the sinks");
            meter.CreateObservableCounter("sidecar_audit_dropped_total", () => recorder.Dropped, description: "Audit records dropped for lack of room (audit.onFull: drop), each counted in an audit_gap event");
            meter.CreateObservableCounter("sidecar_audit_shed_total", () => recorder.Shed, description: "Calls refused with -32015 because their audit record found no room (audit.onFull: shed)");
            meter.CreateObservableCounter("sidecar_audit_sink_failures_total", () => audit.SinkFailures, description: "Audit batches a sink could neither deliver nor keep");
            meter.CreateObservableGauge("sidecar_audit_spool_bytes", () => SpoolBytes(audit), description: "Bytes the http audit sink holds on disk while its collector is down");
        }
        if (gateway.SharedLimits is { } shared)
        {
            shared.RoundTripObserved = seconds => engine.Metrics.SharedRoundTrip.Record(seconds);
            meter.CreateObservableGauge("sidecar_shared_limits_up", () => shared.IsConnected ? 1 : 0, description: "1 while the shared rate-limit store (Redis) is connected");
            meter.CreateObservableCounter("sidecar_shared_limits_errors_total", () => shared.Errors, description: "Round trips to Redis that failed or could not be made (down, timed out)");
            meter.CreateObservableCounter("sidecar_shared_limits_unavailable_total", () => engine.Decisions.SharedUnavailable, description: "Calls refused with -32018: Redis unreachable, failMode closed");
            meter.CreateObservableCounter("sidecar_shared_limits_fallbacks_total", () => engine.Decisions.SharedFallbacks, description: "Calls decided by this replica's own buckets: Redis unreachable, failMode open");
            meter.CreateObservableCounter("sidecar_shared_limits_script_loads_total", () => shared.ScriptLoads, description: "Scripts sent again after NOSCRIPT (Redis restarted or flushed)");
        }
        if (gateway.Reloader is { } reloader)
        {
            meter.CreateObservableCounter("sidecar_config_reloads_total", () => new[]
            {
                new Measurement<long>(reloader.Applied, new KeyValuePair<string, object?>("result", "applied")),
                new Measurement<long>(reloader.Failed, new KeyValuePair<string, object?>("result", "failed")),
            }, description: "Config reloads by result");
        }
        var version = typeof(GatewayObservables).Assembly.GetName().Version?.ToString() ?? "0.0.0";
        meter.CreateObservableGauge("sidecar_build_info", () => new Measurement<int>(1, new KeyValuePair<string, object?>("version", version)),
            description: "Always 1; the version label is this build's");
    }

    private static IEnumerable<Measurement<int>> Sessions(Gateway gateway)
    {
        var engine = gateway.Engine;
        var servers = engine.Current.Servers;
        var measurements = new List<Measurement<int>>(servers.Count);
        foreach (var (name, _) in servers)
        {
            measurements.Add(new Measurement<int>(engine.SessionCountOf(name), new KeyValuePair<string, object?>("server", name)));
        }
        return measurements;
    }

    private static long SpoolBytes(AuditPipeline audit)
    {
        long bytes = 0;
        foreach (var sink in audit.Sinks)
        {
            if (sink is HttpAuditSink http)
            {
                bytes += http.SpooledBytes;
            }
        }
        return bytes;
    }
}
