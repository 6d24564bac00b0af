using System.Text;
using Sidecar.Configuration;

namespace Sidecar.Tests.Configuration;

/// <summary><c>rateLimits</c> in sidecar.json: the memory store by default, or Redis with its connection, prefix, fail mode and timeout.</summary>
public sealed class RateLimitsConfigReaderTests
{
    private static (SidecarConfig? Config, string Errors) Read(string rateLimits, Func<string, string?>? environment = null)
    {
        var json = $$"""{ "mcpServers": { "a": { "command": "node" } }, "policy": "p.json", "rateLimits": {{rateLimits}} }""";
        var diagnostics = new DiagnosticBag("sidecar.json");
        var config = SidecarConfigReader.Read(Encoding.UTF8.GetBytes(json), "/etc/sidecar", diagnostics, environment ?? (_ => null));
        return (config, string.Join("\n", diagnostics.Items));
    }

    [Fact]
    public void Without_it_counters_are_in_memory()
    {
        var diagnostics = new DiagnosticBag("sidecar.json");
        var config = SidecarConfigReader.Read("""{ "mcpServers": { "a": { "command": "node" } }, "policy": "p.json" }"""u8.ToArray(), "/etc", diagnostics, _ => null);
        Assert.NotNull(config);
        Assert.Equal(RateLimitStoreKind.Memory, config.RateLimits.Store);
        Assert.Null(config.RateLimits.Redis);
    }

    [Fact]
    public void Redis_is_read_with_the_password_from_the_environment()
    {
        var (config, errors) = Read("""{ "store": "redis", "redis": { "connection": "127.0.0.1:6379,password=${REDIS_PASSWORD},ssl=true", "prefix": "gw:", "failMode": "open", "timeout": "250ms" } }""",
            name => name == "REDIS_PASSWORD" ? "hunter2" : null);
        Assert.True(config is not null, errors);
        Assert.Equal(RateLimitStoreKind.Redis, config.RateLimits.Store);
        Assert.Equal("127.0.0.1:6379,password=hunter2,ssl=true", config.RateLimits.Redis!.Connection);
        Assert.Equal("gw:", config.RateLimits.Redis.Prefix);
        Assert.Equal(SharedFailMode.Open, config.RateLimits.Redis.FailMode);
        Assert.Equal(TimeSpan.FromMilliseconds(250), config.RateLimits.Redis.Timeout);
    }

    [Fact]
    public void Defaults_are_the_sidecar_prefix_failing_closed()
    {
        var (config, errors) = Read("""{ "store": "redis", "redis": { "connection": "redis.internal:6379" } }""");
        Assert.True(config is not null, errors);
        Assert.Equal("sidecar:", config.RateLimits.Redis!.Prefix);
        Assert.Equal(SharedFailMode.Closed, config.RateLimits.Redis.FailMode);
        Assert.Equal(RedisLimitsConfig.DefaultTimeout, config.RateLimits.Redis.Timeout);
    }

    [Theory]
    [InlineData("""{ "store": "disk" }""", "$.rateLimits.store", "expected \"memory\" or \"redis\"")]
    [InlineData("""{ "store": "redis" }""", "$.rateLimits", "needs rateLimits.redis")]
    [InlineData("""{ "store": "redis", "redis": {} }""", "$.rateLimits.redis", "needs \"connection\"")]
    [InlineData("""{ "store": "redis", "redis": { "connection": "" } }""", "$.rateLimits.redis.connection", "names no host:port")]
    [InlineData("""{ "store": "redis", "redis": { "connection": "h:1", "failMode": "maybe" } }""", "$.rateLimits.redis.failMode", "expected \"closed\" or \"open\"")]
    [InlineData("""{ "store": "redis", "redis": { "connection": "h:1", "prefix": "{x}" } }""", "$.rateLimits.redis.prefix", "hash tag")]
    [InlineData("""{ "store": "redis", "redis": { "connection": "h:1", "timeout": "1ms" } }""", "$.rateLimits.redis.timeout", "10ms to 30s")]
    [InlineData("""{ "store": "redis", "redis": { "connection": "h:1", "db": 2 } }""", "$.rateLimits.redis.db", "unknown field")]
    [InlineData("""{ "redis": { "connection": "h:1" } }""", "$.rateLimits.redis", "store is \"memory\"")]
    [InlineData("""{ "store": "redis", "redis": { "connection": "h:1,password=${MISSING}" } }""", "$.rateLimits.redis.connection", "MISSING")]
    public void Mistakes_are_reported_with_their_path(string rateLimits, string path, string message)
    {
        var (config, errors) = Read(rateLimits);
        Assert.Null(config);
        Assert.Contains(path, errors, StringComparison.Ordinal);
        Assert.Contains(message, errors, StringComparison.Ordinal);
    }

    [Fact]
    public void A_connection_that_does_not_parse_is_reported_without_repeating_it()
    {
        var (config, errors) = Read("""{ "store": "redis", "redis": { "connection": "h:1,password=topsecret,nosuchoption=1" } }""");
        Assert.Null(config);
        Assert.Contains("$.rateLimits.redis.connection", errors, StringComparison.Ordinal);
        Assert.DoesNotContain("topsecret", errors, StringComparison.Ordinal);
    }
}
