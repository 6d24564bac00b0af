using System.Security.Cryptography;
using System.Text;
using BenchmarkDotNet.Attributes;
using Sidecar.Configuration;
using Sidecar.Identity;

namespace Sidecar.Benchmarks;

/// <summary>
/// <see cref="IdentityResolver.Resolve"/> for an API key: the bearer token hashed (SHA-256) and compared in constant
/// time with the stored digest it finds. The cost a request pays for identities, by number of keys.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(BenchConfig))]
public class IdentityBenchmarks
{
    private IdentityResolver _resolver = null!;
    private string?[] _header = null!;

    [Params(2, 100)]
    public int Keys { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var keys = new List<ApiKeyConfig>();
        for (var i = 0; i < Keys; i++)
        {
            keys.Add(new ApiKeyConfig($"agent-{i}", SHA256.HashData(Encoding.UTF8.GetBytes($"sk-live-{i:D4}-8f3a1c9e7b2d4f60")), "ops", default));
        }
        _resolver = new IdentityResolver(new IdentitiesConfig(keys));
        _header = [$"Bearer sk-live-{Keys - 1:D4}-8f3a1c9e7b2d4f60"];
    }

    [Benchmark(Description = "API key: SHA-256 of the token + one digest lookup, compared in constant time")]
    public Caller ApiKey()
    {
        _resolver.Resolve(_header, out var caller);
        return caller;
    }
}
