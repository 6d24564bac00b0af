using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Logging;
using Sidecar.Configuration;
using StackExchange.Redis;

namespace Sidecar.RateLimiting;

/// <summary>One shared limit of a call: its Redis key and GCRA parameters in microseconds (Redis's clock is <c>TIME</c>, in µs).</summary>
public readonly record struct SharedLimit(string Key, long Cost, long EmissionMicros, long ToleranceMicros);

public enum SharedStatus : byte
{
    /// <summary>Every limit had the tokens: all were taken.</summary>
    Admitted,

    /// <summary>One limit (<see cref="SharedAcquire.Failed"/>) had too few: none was taken.</summary>
    Rejected,

    /// <summary>Redis did not answer (down, timed out): nothing is known, nothing was taken.</summary>
    Unavailable,
}

/// <summary>The outcome of one shared acquire: for a rejection, which limit and when to retry; tokens left in the tightest bucket.</summary>
public readonly record struct SharedAcquire(SharedStatus Status, int Failed, long Remaining, long RetryAfterMs, string? Error = null);

/// <summary>
/// Counters shared by every replica: the asynchronous side of rate limiting (<see cref="RateLimitStore"/> is the
/// synchronous, in-memory one). <see cref="Decisions.DecisionEngine"/> takes a call's shared limits through it in one
/// <see cref="AcquireAsync"/>, all or nothing. <see cref="RedisLimitStore"/> is the implementation.
/// </summary>
public interface ISharedLimitStore
{
    /// <summary>What a call that needs a shared counter gets while the store is unreachable.</summary>
    SharedFailMode FailMode { get; }

    /// <summary>The key of one shared bucket (its server's counter space, counter, scope and scope parts).</summary>
    string KeyFor(string space, string counter, byte scope, string? part1, string? part2);

    /// <summary>Takes every limit's tokens, or none; <see cref="SharedStatus.Unavailable"/> when the store cannot be reached.</summary>
    ValueTask<SharedAcquire> AcquireAsync(IReadOnlyList<SharedLimit> limits);

    /// <summary>Gives back what an admitted acquire took. Best effort.</summary>
    ValueTask RefundAsync(IReadOnlyList<SharedLimit> limits);
}

/// <summary>Checks a Redis connection string without opening it; the message never repeats the string (it may hold a password).</summary>
public static class RedisConnection
{
    public static string? Check(string connection)
    {
        if (string.IsNullOrWhiteSpace(connection))
        {
            return "it is empty: it names no host:port";
        }
        try
        {
            var options = ConfigurationOptions.Parse(connection);
            return options.EndPoints.Count == 0 ? "it names no host:port" : null;
        }
        catch (Exception ex) when (ex is ArgumentException or RedisConnectionException or FormatException)
        {
            return "it does not parse as a StackExchange.Redis connection string (host:port, then options such as password=, ssl=true)";
        }
    }
}

/// <summary>
/// Rate-limit counters shared by every replica, in Redis. Each decision is <b>one</b> atomic server-side script
/// (<c>EVALSHA</c>; the script is sent again with <c>EVAL</c> only after a <c>NOSCRIPT</c>, e.g. when Redis restarted):
/// the same GCRA as <see cref="RateLimitStore"/>, on Redis's own clock, over all the call's shared limits at once,
/// all or nothing. A bucket is one key holding its theoretical arrival time (µs), expiring once it would be full
/// again, so idle counters vanish by themselves. Keys: <c>{prefix}{{{space}}}:{counter}:{scope}:{part}…</c>, the server
/// in a hash tag so that all of a call's keys sit in one cluster slot. The connection reconnects by itself; while it is
/// down every acquire answers <see cref="SharedStatus.Unavailable"/> at once.
/// </summary>
public sealed partial class RedisLimitStore : ISharedLimitStore, IAsyncDisposable
{
    /// <summary>
    /// KEYS: the buckets. ARGV: per key cost, emission (µs per token), tolerance (emission × max). Returns
    /// {1, 0, remaining, 0} when all were taken, {0, i, remaining of i, retry after µs} when key i (1-based) had too few.
    /// Numbers are written with %.0f: Lua's tostring would round a µs timestamp to 6 digits.
    /// </summary>
    internal const string AcquireScript = """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
        local tats = {}
        local remaining = -1
        for i = 1, #KEYS do
          local cost = tonumber(ARGV[i * 3 - 2])
          local emission = tonumber(ARGV[i * 3 - 1])
          local tolerance = tonumber(ARGV[i * 3])
          local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
          if tat < now then tat = now end
          local newTat = tat + cost * emission
          local ahead = newTat - now
          if ahead > tolerance then
            return {0, i, math.floor((tolerance - (tat - now)) / emission), ahead - tolerance}
          end
          tats[i] = newTat
          local left = math.floor((tolerance - ahead) / emission)
          if remaining < 0 or left < remaining then remaining = left end
        end
        for i = 1, #KEYS do
          redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.floor((tats[i] - now) / 1000) + 1000)
        end
        return {1, 0, remaining, 0}
        """;

    /// <summary>KEYS: the buckets; ARGV: per key the µs to give back. A bucket that expired meanwhile was full already.</summary>
    internal const string RefundScript = """
        for i = 1, #KEYS do
          local tat = redis.call('GET', KEYS[i])
          if tat then
            redis.call('SET', KEYS[i], string.format('%.0f', tonumber(tat) - tonumber(ARGV[i])), 'KEEPTTL')
          end
        end
        return #KEYS
        """;

    private static readonly byte[] s_acquireHash = SHA1.HashData(Encoding.UTF8.GetBytes(AcquireScript));
    private static readonly byte[] s_refundHash = SHA1.HashData(Encoding.UTF8.GetBytes(RefundScript));

    private readonly RedisLimitsConfig _config;
    private readonly ILogger _logger;
    private readonly ConfigurationOptions _options;
    private readonly SemaphoreSlim _connecting = new(1, 1);
    private ConnectionMultiplexer? _redis;
    private long _roundTrips;
    private long _errors;
    private long _scriptLoads;
    private int _disposed;

    public RedisLimitStore(RedisLimitsConfig config, ILogger logger)
    {
        _config = config;
        _logger = logger;
        _options = ConfigurationOptions.Parse(config.Connection);
        _options.AbortOnConnectFail = false; // connect (and reconnect) in the background; never fail start-up
        _options.ConnectTimeout = (int)Math.Max(config.Timeout.TotalMilliseconds, 1000);
        _options.AsyncTimeout = (int)config.Timeout.TotalMilliseconds;
        _options.SyncTimeout = (int)config.Timeout.TotalMilliseconds;
        _options.ClientName ??= "sidecar";
        _options.ConnectRetry = 1;
    }

    /// <summary>The key prefix (<c>rateLimits.redis.prefix</c>).</summary>
    public string Prefix => _config.Prefix;

    public SharedFailMode FailMode => _config.FailMode;

    /// <summary>Where Redis is, for logs and readiness: the endpoints only, never the password.</summary>
    public string Endpoints => string.Join(",", _options.EndPoints.Select(e => e.ToString()));

    /// <summary>True while the connection to Redis is up.</summary>
    public bool IsConnected => Volatile.Read(ref _redis) is { IsConnected: true };

    /// <summary>Scripts run (each decision's acquire is one; a refund is one).</summary>
    public long RoundTrips => Interlocked.Read(ref _roundTrips);

    /// <summary>Round trips that failed (Redis down, timeout, an error from the script).</summary>
    public long Errors => Interlocked.Read(ref _errors);

    /// <summary>Times a script was sent whole after <c>NOSCRIPT</c> (Redis restarted or flushed its scripts).</summary>
    public long ScriptLoads => Interlocked.Read(ref _scriptLoads);

    /// <summary>Told the duration of every successful round trip, in seconds (the metrics' histogram).</summary>
    public Action<double>? RoundTripObserved { get; set; }

    /// <summary>Starts connecting (in the background: the gateway starts whether Redis is up or not).</summary>
    public async Task StartAsync()
    {
        await _connecting.WaitAsync().ConfigureAwait(false);
        try
        {
            if (_redis is null && Volatile.Read(ref _disposed) == 0)
            {
                var redis = await ConnectionMultiplexer.ConnectAsync(_options).ConfigureAwait(false);
                redis.ConnectionFailed += (_, e) => LogConnectionLost(Endpoints, e.FailureType.ToString());
                redis.ConnectionRestored += (_, _) =>
                {
                    LogConnectionRestored(Endpoints);
                    _ = PreloadAsync(redis);
                };
                Volatile.Write(ref _redis, redis);
                if (redis.IsConnected)
                {
                    await PreloadAsync(redis).ConfigureAwait(false);
                }
                else
                {
                    LogNotConnected(Endpoints);
                }
            }
        }
        finally
        {
            _connecting.Release();
        }
    }

    /// <summary>
    /// Loads both scripts (<c>SCRIPT LOAD</c>) on every server, once connected and after every reconnection, so that
    /// decisions find them with their one <c>EVALSHA</c>. Best effort: a decision that meets <c>NOSCRIPT</c> anyway sends
    /// the script itself.
    /// </summary>
    private async Task PreloadAsync(ConnectionMultiplexer redis)
    {
        try
        {
            foreach (var endpoint in redis.GetEndPoints())
            {
                var server = redis.GetServer(endpoint);
                if (server.IsConnected)
                {
                    await server.ScriptLoadAsync(AcquireScript).ConfigureAwait(false);
                    await server.ScriptLoadAsync(RefundScript).ConfigureAwait(false);
                }
            }
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException or ObjectDisposedException)
        {
            LogRoundTripFailed(Endpoints, ex.GetType().Name, ex.Message);
        }
    }

    /// <summary>The key of one shared bucket. Parts are escaped so that no two keys collide (':', '%', braces).</summary>
    public string KeyFor(string space, string counter, byte scope, string? part1, string? part2)
    {
        var key = new StringBuilder(_config.Prefix.Length + space.Length + counter.Length + 32);
        key.Append(_config.Prefix).Append('{');
        Escape(key, space);
        key.Append("}:");
        Escape(key, counter);
        key.Append(':').Append(scope switch { 0 => 'g', 1 => 'i', 3 => 'a', _ => 's' });
        if (part1 is not null)
        {
            key.Append(':');
            Escape(key, part1);
        }
        if (part2 is not null)
        {
            key.Append(':');
            Escape(key, part2);
        }
        return key.ToString();
    }

    private static void Escape(StringBuilder key, string part)
    {
        foreach (var c in part)
        {
            if (c is ':' or '%' or '{' or '}')
            {
                key.Append('%').Append(((int)c).ToString("X2", CultureInfo.InvariantCulture));
            }
            else
            {
                key.Append(c);
            }
        }
    }

    /// <summary>GCRA parameters of a limit of <paramref name="max"/> per <paramref name="windowSeconds"/> in µs (the emission rounded up, as in memory).</summary>
    public static (long Emission, long Tolerance) Parameters(long max, long windowSeconds)
    {
        var emission = Math.Max(1, (windowSeconds * 1_000_000 + max - 1) / max);
        return (emission, emission * max);
    }

    /// <summary>Takes every limit's tokens in one atomic script, or none. One round trip (two after a <c>NOSCRIPT</c>).</summary>
    public async ValueTask<SharedAcquire> AcquireAsync(IReadOnlyList<SharedLimit> limits)
    {
        if (Volatile.Read(ref _redis) is not { IsConnected: true } redis)
        {
            Interlocked.Increment(ref _errors);
            return new SharedAcquire(SharedStatus.Unavailable, 0, -1, -1, "not connected to Redis at " + Endpoints);
        }
        var keys = new RedisKey[limits.Count];
        var values = new RedisValue[limits.Count * 3];
        for (var i = 0; i < limits.Count; i++)
        {
            keys[i] = limits[i].Key;
            values[i * 3] = limits[i].Cost;
            values[i * 3 + 1] = limits[i].EmissionMicros;
            values[i * 3 + 2] = limits[i].ToleranceMicros;
        }
        try
        {
            var result = await EvaluateAsync(redis, s_acquireHash, AcquireScript, keys, values).ConfigureAwait(false);
            var parts = (RedisResult[])result!;
            var admitted = (long)parts[0] == 1;
            var remaining = (long)parts[2];
            return admitted
                ? new SharedAcquire(SharedStatus.Admitted, 0, remaining, 0)
                : new SharedAcquire(SharedStatus.Rejected, (int)(long)parts[1] - 1, Math.Max(0, remaining), ((long)parts[3] + 999) / 1000);
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException or InvalidCastException or ObjectDisposedException)
        {
            Interlocked.Increment(ref _errors);
            LogRoundTripFailed(Endpoints, ex.GetType().Name, ex.Message);
            return new SharedAcquire(SharedStatus.Unavailable, 0, -1, -1, ex is RedisTimeoutException or TimeoutException ? "Redis did not answer in time" : "Redis failed: " + ex.GetType().Name);
        }
    }

    /// <summary>Gives back what an admitted acquire took (the call failed upstream). Best effort: failures are counted and logged.</summary>
    public async ValueTask RefundAsync(IReadOnlyList<SharedLimit> limits)
    {
        if (Volatile.Read(ref _redis) is not { IsConnected: true } redis)
        {
            Interlocked.Increment(ref _errors);
            return;
        }
        var keys = new RedisKey[limits.Count];
        var values = new RedisValue[limits.Count];
        for (var i = 0; i < limits.Count; i++)
        {
            keys[i] = limits[i].Key;
            values[i] = limits[i].Cost * limits[i].EmissionMicros;
        }
        try
        {
            await EvaluateAsync(redis, s_refundHash, RefundScript, keys, values).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException or ObjectDisposedException)
        {
            Interlocked.Increment(ref _errors);
            LogRoundTripFailed(Endpoints, ex.GetType().Name, ex.Message);
        }
    }

    /// <summary><c>EVALSHA</c>; on <c>NOSCRIPT</c>, <c>EVAL</c> (which loads the script again for the next <c>EVALSHA</c>).</summary>
    private async Task<RedisResult> EvaluateAsync(ConnectionMultiplexer redis, byte[] hash, string script, RedisKey[] keys, RedisValue[] values)
    {
        var db = redis.GetDatabase();
        var started = Stopwatch.GetTimestamp();
        Interlocked.Increment(ref _roundTrips);
        RedisResult result;
        try
        {
            result = await db.ScriptEvaluateAsync(hash, keys, values).ConfigureAwait(false);
        }
        catch (RedisServerException ex) when (ex.Message.StartsWith("NOSCRIPT", StringComparison.Ordinal))
        {
            Interlocked.Increment(ref _scriptLoads);
            Interlocked.Increment(ref _roundTrips);
            result = await db.ScriptEvaluateAsync(script, keys, values).ConfigureAwait(false);
        }
        RoundTripObserved?.Invoke(Stopwatch.GetElapsedTime(started).TotalSeconds);
        return result;
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        await _connecting.WaitAsync().ConfigureAwait(false);
        try
        {
            if (Interlocked.Exchange(ref _redis, null) is { } redis)
            {
                await redis.CloseAsync().ConfigureAwait(false);
                redis.Dispose();
            }
        }
        finally
        {
            _connecting.Release();
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Shared rate limits: the connection to Redis at {Endpoints} was lost ({Failure}); reconnecting")]
    private partial void LogConnectionLost(string endpoints, string failure);

    [LoggerMessage(Level = LogLevel.Information, Message = "Shared rate limits: connected to Redis at {Endpoints} again")]
    private partial void LogConnectionRestored(string endpoints);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Shared rate limits: Redis at {Endpoints} is not reachable yet; connecting in the background")]
    private partial void LogNotConnected(string endpoints);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Shared rate limits: a round trip to Redis at {Endpoints} failed ({Kind}: {Error})")]
    private partial void LogRoundTripFailed(string endpoints, string kind, string error);
}
