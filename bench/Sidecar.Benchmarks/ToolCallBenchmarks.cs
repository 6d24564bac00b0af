using System.Buffers;
using System.Collections.Frozen;
using System.Security.Cryptography;
using System.Text;
using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Logging.Abstractions;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Decisions;
using Sidecar.Identity;
using Sidecar.JsonRpc;
using Sidecar.Policy;
using Sidecar.RateLimiting;
using Sidecar.Sessions;

namespace Sidecar.Benchmarks;

/// <summary>
/// An allowed <c>tools/call</c> of an identified agent, as the session engine decides it: the API key resolved to
/// its identity and grant, the grant's policy for the server, <see cref="ToolCalls.Decide"/> (name copied, decision,
/// audit record with identity and grant) and the completion record, with the admin API on (so approvals are
/// possible), and the call's metrics (its counter and the two histograms of a forwarded call), with and without the
/// <c>/metrics</c> exporter listening, and with the tool pinned (its pin looked up and compared with what the server's
/// last list showed) or not. Target: 0 bytes allocated per call every way.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(BenchConfig))]
public class ToolCallBenchmarks
{
    private static readonly ReadOnlySequence<byte> RequestId = new("17"u8.ToArray());

    private byte[] _message = null!;
    private ReadOnlySequence<byte> _sequence;
    private JsonRpcScan _scan;
    private IdentityResolver _resolver = null!;
    private string?[] _header = null!;
    private ServerState _server = null!;
    private GatewayOptions _options = null!;
    private ToolCalls _calls = null!;
    private AuditPipeline _pipeline = null!;
    private AuditQueue _queue = null!;
    private Sidecar.Metrics.GatewayMetrics _metrics = null!;
    private Sidecar.Metrics.PrometheusExporter? _exporter;

    /// <summary>With <c>/metrics</c> listening (the gateway's exporter attached to its meter), or with nobody listening.</summary>
    [Params(false, true)]
    public bool Metrics { get; set; }

    /// <summary>With the called tool pinned (and last seen as pinned: the pin check's whole path), or without pins.</summary>
    [Params(false, true)]
    public bool Pinned { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _message = Payloads.TypicalCall;
        _sequence = new ReadOnlySequence<byte>(_message);
        JsonRpcScanner.Scan(_message, out _scan);
        var key = "sk-live-0001-8f3a1c9e7b2d4f60";
        var grants = new Dictionary<string, GrantConfig> { ["ops"] = new("ops", new Dictionary<string, string> { ["*"] = "ops.json" }) };
        _resolver = new IdentityResolver(new IdentitiesConfig([new ApiKeyConfig("ops-agent", SHA256.HashData(Encoding.UTF8.GetBytes(key)), "ops", default)]), grants);
        _header = ["Bearer " + key];
        var policy = Pinned ? Policies.RealisticPinned() : Policies.Realistic();
        _server = new ServerState(new ServerConfig("bench", default, UpstreamTransport.Stdio, "node", [], new Dictionary<string, string>(), null, null,
                new Dictionary<string, string>(), null),
            policy, new UpstreamHandle(null!), 64, new Dictionary<string, PolicyModel> { ["ops"] = policy }.ToFrozenDictionary());
        _options = new GatewayOptions(GatewayLimits.Default, BlockedCallStyle.Error) { ApprovalsEnabled = true };
        // Not started: no writer thread competes for the slots; the benchmark releases them.
        _pipeline = new AuditPipeline(AuditConfig.Default with { File = null, BufferEvents = 1024 }, [], NullLogger.Instance,
            TimeSpan.FromMinutes(1), AuditChainHead.Empty, "bench");
        _queue = _pipeline.Recorder.Queue!;
        _metrics = new Sidecar.Metrics.GatewayMetrics();
        if (Metrics)
        {
            _exporter = new Sidecar.Metrics.PrometheusExporter(instrument => ReferenceEquals(instrument.Meter, _metrics.Meter));
        }
        if (Pinned)
        {
            var mismatches = new List<PinMismatch>();
            foreach (var (tool, pins) in _server.Pins.Watched)
            {
                _server.Pins.Watch.Observe(tool, Policies.Pin, pins, mismatches);
            }
            if (!policy.TryGetPin(Payloads.TypicalTool, out _) || mismatches.Count > 0)
            {
                throw new InvalidOperationException("the typical call's tool is not pinned, or not seen as pinned");
            }
        }
        _calls = new ToolCalls(new DecisionEngine(new RateLimitStore()), _pipeline.Recorder, new SessionLog(NullLogger.Instance), _metrics);
        for (var i = 0; i < 4096; i++)
        {
            Call(); // every slot gets its buffer
        }
        if (Call() != CallVerdict.Forward)
        {
            throw new InvalidOperationException("the typical call is not forwarded under the benchmark's grant policy");
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _exporter?.Dispose();
        _metrics.Dispose();
        _pipeline.DisposeAsync().AsTask().GetAwaiter().GetResult();
    }

    [Benchmark(Description = "API key + grant policy + ToolCalls.Decide + audit decision and completion")]
    public int IdentifiedCall() => (int)Call();

    private CallVerdict Call()
    {
        _resolver.Resolve(_header, out var caller);
        var verdict = _calls.Decide(_server, caller, _options, _sequence, _scan, new CallContext(caller.Identity, caller.Grant, "session-1"), RequestId,
            out _, out _, out var auditId, out _);
        _pipeline.Recorder.RecordCompletion(auditId, AuditOutcome.Ok);
        _metrics.RecordForwarded("bench", 1200, 250_000); // the forwarded call's two histograms
        while (_queue.TryPeek(out var position))
        {
            _queue.Release(position);
        }
        return verdict;
    }
}
