using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace Sidecar.Tests.Audit;

/// <summary>
/// The hash chain recomputed from the README's description alone, without AuditChain or AuditVerifier: an event's
/// <c>hash</c> is SHA-256 over the event as written without its <c>hash</c> field (which ends with <c>prev</c>, the
/// previous event's hash; the first event's <c>prev</c> is 64 zeros), and <c>seq</c> counts 1, 2, 3…
/// </summary>
public sealed class AuditChainSpecTests : IDisposable
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), "sidecar-chain-spec-" + Guid.NewGuid().ToString("N"));

    public AuditChainSpecTests() => Directory.CreateDirectory(_folder);

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Fact]
    public async Task Every_hash_is_sha256_of_the_line_without_its_hash_field_and_links_to_the_previous_one()
    {
        var path = Path.Combine(_folder, "audit.jsonl");
        await AuditTest.RunFileAsync(path, 5);
        await AuditTest.RunFileAsync(path, 3); // a second run continues the chain

        var lines = (await File.ReadAllTextAsync(path)).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2 + 5 + 2 + 3, lines.Length);
        var previous = new string('0', 64);
        for (var i = 0; i < lines.Length; i++)
        {
            var line = lines[i];
            using var document = JsonDocument.Parse(line);
            var root = document.RootElement;
            Assert.Equal(i + 1, root.GetProperty("seq").GetInt64());
            Assert.Equal(previous, root.GetProperty("prev").GetString());

            // The README: the line is the event with ,"hash":"<64 hex>" as its last field.
            var hash = root.GetProperty("hash").GetString()!;
            var suffix = $",\"hash\":\"{hash}\"}}";
            Assert.EndsWith(suffix, line, StringComparison.Ordinal);
            var withoutHash = line[..^suffix.Length] + "}";
            Assert.EndsWith($"\"prev\":\"{previous}\"}}", withoutHash, StringComparison.Ordinal);
            Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(withoutHash))), hash);
            previous = hash;
        }
    }
}
