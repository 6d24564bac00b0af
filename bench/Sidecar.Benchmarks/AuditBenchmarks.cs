using System.Buffers;
using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Logging.Abstractions;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Decisions;
using Sidecar.JsonRpc;
using Sidecar.Policy;
using Sidecar.RateLimiting;

namespace Sidecar.Benchmarks;

/// <summary>
/// What auditing adds to the call path: recording a forwarded call's decision (tool name, request id and arguments
/// copied into a queue slot) and its completion, and the whole hot path with both. The writer (redaction, hash chain,
/// sinks) runs on its own thread in the gateway; here the benchmark frees the slots itself so that the queue never
/// fills, which measures the producer side alone. Target: 0 bytes allocated.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(BenchConfig))]
public class AuditBenchmarks
{
    private static readonly CallContext Context = new("agent-1", "grant-1", "session-1");
    private static readonly byte[] RequestId = "17"u8.ToArray();

    private byte[] _message = null!;
    private ReadOnlySequence<byte> _sequence;
    private DecisionEngine _engine = null!;
    private PolicyModel _policy = null!;
    private AuditPipeline _pipeline = null!;
    private AuditRecorder _recorder = null!;
    private AuditQueue _queue = null!;
    private Decision _allowed;
    private ReadOnlySequence<byte> _arguments;

    [GlobalSetup]
    public void Setup()
    {
        _message = Payloads.TypicalCall;
        _sequence = new ReadOnlySequence<byte>(_message);
        _policy = Policies.Realistic();
        _engine = new DecisionEngine(new RateLimitStore());
        // Not started: no writer thread competes for the slots; the benchmark releases them.
        _pipeline = new AuditPipeline(AuditConfig.Default with { File = null, BufferEvents = 1024 }, [], NullLogger.Instance,
            TimeSpan.FromMinutes(1), AuditChainHead.Empty, "bench");
        _recorder = _pipeline.Recorder;
        _queue = _recorder.Queue!;
        JsonRpcScanner.Scan(_message, out var scan);
        _arguments = _sequence.Slice(scan.Arguments.Start, scan.Arguments.Length);
        _allowed = new Decision { Outcome = DecisionOutcome.Allow, Enforced = true, Rule = "tools.echo", Reason = "", RetryAfterMs = -1, Remaining = 5 };
        for (var i = 0; i < 4096; i++)
        {
            RecordDecisionAndCompletion(); // every slot gets its buffer
        }
    }

    [GlobalCleanup]
    public void Cleanup() => _pipeline.DisposeAsync().AsTask().GetAwaiter().GetResult();

    [Benchmark(Baseline = true, Description = "Audit: record decision + completion (arguments already sliced)")]
    public long RecordDecisionAndCompletion()
    {
        var id = _recorder.RecordDecision("everything", Context, "echo", RequestId, _arguments, _allowed, forwarded: true);
        _recorder.RecordCompletion(id, AuditOutcome.Ok);
        Drain();
        return id;
    }

    [Benchmark(Description = "Hot path + audit: scan + name + decide + record + complete")]
    public DecisionOutcome HotPathWithAudit()
    {
        if (JsonRpcScanner.Scan(_message, out var scan) != ScanStatus.Ok || scan.Method != McpMethod.ToolsCall)
        {
            return DecisionOutcome.InvalidArguments;
        }
        Span<char> name = stackalloc char[128];
        if (!JsonRpcScanner.TryCopyName(_message, scan, name, out var length))
        {
            return DecisionOutcome.Deny;
        }
        var arguments = _sequence.Slice(scan.Arguments.Start, scan.Arguments.Length);
        _engine.Decide(_policy, Context, name[..length], scan.Arguments.SliceOf(_message), approved: false, out var decision);
        var id = _recorder.RecordDecision("everything", Context, name[..length], RequestId, arguments, decision, forwarded: !decision.Blocks);
        _recorder.RecordCompletion(id, AuditOutcome.Ok);
        Drain();
        return decision.Outcome;
    }

    private void Drain()
    {
        while (_queue.TryPeek(out var position))
        {
            _queue.Release(position);
        }
    }
}
