using System.Buffers;
using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Logging.Abstractions;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Decisions;
using Sidecar.JsonRpc;

namespace Sidecar.Benchmarks;

/// <summary>
/// The audit writer on one core: the whole loop (take a forwarded call's decision and completion from the queue, join
/// them, write the redacted, hash-chained tool_call line into the batch, hand the batch to the sinks), and its stages
/// alone. Each loop case records <see cref="Events"/> typical calls (the send_request call of <see cref="Payloads"/>,
/// a ~560-byte line) and runs the writer's passes over them on the benchmark thread: one operation is one event, the
/// ~100 ns of recording included (AuditBenchmarks measures it alone). Events per second on one core = 1 s / mean.
/// The redaction stage is RedactionBenchmarks' typical case (the same arguments).
/// </summary>
[MemoryDiagnoser]
[Config(typeof(BenchConfig))]
public class AuditWriterBenchmarks
{
    private const int Events = 512;
    private static readonly CallContext Context = new(null, null, "3f0c6a2e9b7d4f1a8e3c2d9b7a6c1e04");
    private static readonly byte[] RequestId = "1287"u8.ToArray();

    private AuditPipeline _nullPipeline = null!;
    private AuditPipeline _filePipeline = null!;
    private string _folder = null!;
    private ReadOnlySequence<byte> _arguments;
    private readonly ReadOnlySequence<byte> _noArguments = new("{}"u8.ToArray());
    private Decision _allowed;
    private byte[] _eventLine = null!;
    private byte[] _hash = null!;
    private readonly AuditChain _chain = new(null);

    [GlobalSetup]
    public void Setup()
    {
        JsonRpcScanner.Scan(Payloads.TypicalCall, out var scan);
        _arguments = new ReadOnlySequence<byte>(Payloads.TypicalCall.AsSpan(scan.Arguments.Start, scan.Arguments.Length).ToArray());
        _allowed = new Decision { Outcome = DecisionOutcome.Allow, Enforced = true, Rule = "tools.send_request", Reason = "", RetryAfterMs = -1, Remaining = 41 };
        var config = AuditConfig.Default with { File = null, BufferEvents = 4 * Events };
        // Not started: the benchmark thread runs the writer's passes itself.
        _nullPipeline = new AuditPipeline(config, [new NullSink()], NullLogger.Instance, TimeSpan.FromMinutes(1), AuditChainHead.Empty, "bench");
        _folder = Path.Combine(Path.GetTempPath(), "sidecar-bench-audit-" + Environment.ProcessId);
        Directory.CreateDirectory(_folder);
        var file = new FileAuditSink(new AuditFileConfig(Path.Combine(_folder, "audit.jsonl"), 64L * 1024 * 1024, 1), NullLogger.Instance);
        _filePipeline = new AuditPipeline(config, [file], NullLogger.Instance, TimeSpan.FromMinutes(1), file.Head, "bench");

        _hash = new byte[AuditChain.HashBytes];
        // One event line as the writer writes it, for the hash stage.
        RecordCalls(_nullPipeline.Recorder);
        var sink = new CaptureSink();
        var capture = new AuditPipeline(config, [sink], NullLogger.Instance, TimeSpan.FromMinutes(1), AuditChainHead.Empty, "bench");
        RecordCalls(capture.Recorder, 1);
        capture.RunOnce();
        _eventLine = sink.FirstLine ?? throw new InvalidOperationException("no event was written");
        EventBytes = _eventLine.Length;
        while (_nullPipeline.RunOnce() > 0)
        {
        }
    }

    /// <summary>Bytes of the typical event line (reported in RESULTS.md).</summary>
    public static int EventBytes { get; private set; }

    [GlobalCleanup]
    public void Cleanup()
    {
        _nullPipeline.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _filePipeline.DisposeAsync().AsTask().GetAwaiter().GetResult();
        Directory.Delete(_folder, recursive: true);
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Events, Description = "Writer loop, per event: record + join + redact + id + format + hash (null sink)")]
    public int WriterLoopNullSink() => Loop(_nullPipeline);

    [Benchmark(OperationsPerInvoke = Events, Description = "Writer loop, per event, into the JSONL file (one write(2) per batch)")]
    public int WriterLoopFile() => Loop(_filePipeline);

    [Benchmark(OperationsPerInvoke = Events, Description = "Writer loop, per event, with empty arguments (no redaction work; null sink)")]
    public int WriterLoopNoArguments() => Loop(_nullPipeline, _noArguments);

    [Benchmark(Description = "Stage: chain hash (SHA-256 of one event line)")]
    public byte StageChainHash()
    {
        _chain.Hash(_eventLine, _hash);
        return _hash[0];
    }

    [Benchmark(Description = "Stage: event id (UUIDv7)")]
    public Guid StageEventId() => _nullPipeline.NewEventId(DateTime.UtcNow);

    private int Loop(AuditPipeline pipeline) => Loop(pipeline, _arguments);

    private int Loop(AuditPipeline pipeline, ReadOnlySequence<byte> arguments)
    {
        RecordCalls(pipeline.Recorder, Events, arguments);
        var taken = 0;
        int drained;
        while ((drained = pipeline.RunOnce()) > 0)
        {
            taken += drained;
        }
        return taken;
    }

    private void RecordCalls(AuditRecorder recorder, int count = Events) => RecordCalls(recorder, count, _arguments);

    private void RecordCalls(AuditRecorder recorder, int count, ReadOnlySequence<byte> arguments)
    {
        for (var i = 0; i < count; i++)
        {
            var id = recorder.RecordDecision("everything", Context, Payloads.TypicalTool, RequestId, arguments, _allowed, forwarded: true);
            recorder.RecordCompletion(id, AuditOutcome.Ok);
        }
    }

    private sealed class NullSink : IAuditSink
    {
        public long Bytes { get; private set; }

        public string Name => "null";

        public ValueTask WriteAsync(AuditBatch batch, CancellationToken cancellationToken)
        {
            Bytes += batch.Lines.Length;
            return ValueTask.CompletedTask;
        }

        public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }

    private sealed class CaptureSink : IAuditSink
    {
        public byte[]? FirstLine { get; private set; }

        public string Name => "capture";

        public ValueTask WriteAsync(AuditBatch batch, CancellationToken cancellationToken)
        {
            var span = batch.Lines.Span;
            var start = 0;
            while (start < span.Length)
            {
                var end = span[start..].IndexOf((byte)'\n');
                var line = span.Slice(start, end);
                if (line.IndexOf("\"tool_call\""u8) >= 0)
                {
                    FirstLine ??= line.ToArray();
                }
                start += end + 1;
            }
            return ValueTask.CompletedTask;
        }

        public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
