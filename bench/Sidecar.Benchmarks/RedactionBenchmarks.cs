using System.Buffers;
using System.Text;
using System.Text.Json;
using BenchmarkDotNet.Attributes;
using Sidecar.Audit;
using Sidecar.Configuration;

namespace Sidecar.Benchmarks;

/// <summary>
/// <see cref="AuditRedactor.WriteArguments(Utf8JsonWriter, ReadOnlySpan{byte}, bool)"/> on the audit writer's thread:
/// secret keys, credential-shaped strings (whole or inside text), URL passwords and long strings, written into a
/// reused writer. The default <c>maxStringLength</c> (256) cuts none of these strings, so this is the scan alone; the
/// four secrets in the last fixture are each replaced in place.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(BenchConfig))]
public class RedactionBenchmarks
{
    private readonly AuditRedactor _redactor = new(AuditConfig.Default.RedactKeys, AuditConfig.Default.MaxStringLength);
    private readonly ArrayBufferWriter<byte> _buffer = new(16 * 1024);
    private Utf8JsonWriter _writer = null!;

    [GlobalSetup]
    public void Setup()
    {
        _writer = new Utf8JsonWriter(_buffer);
        foreach (var (fixture, size) in new[] { (Payloads.ProseArguments, 4096), (Payloads.ProseArgumentsWithSecrets, 4096) })
        {
            if (Math.Abs(fixture.Length - size) > 300)
            {
                throw new InvalidOperationException($"the ~4 KB fixture is {fixture.Length} bytes");
            }
        }
        foreach (var fixture in new[] { Payloads.TypicalArguments, Payloads.ProseArguments, Payloads.ProseArgumentsWithSecrets })
        {
            using var document = JsonDocument.Parse(fixture); // valid JSON
            _writer.Reset(_buffer);
            _writer.WriteStartObject();
            if (_redactor.WriteArguments(_writer, fixture, complete: true))
            {
                throw new InvalidOperationException("a fixture's string was cut: the benchmark would measure the cut, not the scan");
            }
        }
        _ = Write(Payloads.ProseArgumentsWithSecrets);
        var written = Encoding.UTF8.GetString(_buffer.WrittenSpan);
        foreach (var secret in (ReadOnlySpan<string>)["sk-live-4f9a", "eyJhbGci", "Wh1teRabb1t", "ghp_Z8x1"])
        {
            if (written.Contains(secret, StringComparison.Ordinal) || !written.Contains("[REDACTED]", StringComparison.Ordinal))
            {
                throw new InvalidOperationException($"the embedded secret {secret}… was not redacted");
            }
        }
    }

    [GlobalCleanup]
    public void Cleanup() => _writer.Dispose();

    [Benchmark(Baseline = true, Description = "Redact typical arguments (~170 B)")]
    public int Typical() => Write(Payloads.TypicalArguments);

    [Benchmark(Description = "Redact ~4 KB of prose")]
    public int Prose() => Write(Payloads.ProseArguments);

    [Benchmark(Description = "Redact ~4 KB of prose with 4 embedded secrets")]
    public int ProseWithSecrets() => Write(Payloads.ProseArgumentsWithSecrets);

    private int Write(byte[] arguments)
    {
        _buffer.ResetWrittenCount();
        _writer.Reset(_buffer);
        _writer.WriteStartObject();
        _redactor.WriteArguments(_writer, arguments, complete: true);
        _writer.WriteEndObject();
        _writer.Flush();
        return _buffer.WrittenCount;
    }
}
