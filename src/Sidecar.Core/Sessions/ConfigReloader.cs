using System.Security.Cryptography;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Sidecar.Audit;
using Sidecar.Configuration;

namespace Sidecar.Sessions;

/// <summary>What set off a reload: its name in logs and in <c>config_reload</c> audit events.</summary>
internal enum ReloadTrigger : byte { Signal, File, Api }

/// <summary>How a reload ended.</summary>
internal enum ReloadStatus : byte
{
    /// <summary>The new snapshot is live.</summary>
    Applied,

    /// <summary>The files were read and are what is already live (a watcher event for a file that did not change).</summary>
    Unchanged,

    /// <summary>Something was invalid: nothing changed, the old snapshot keeps serving.</summary>
    Failed,
}

/// <summary>The result of one reload, as <c>config_reload</c> records it (and as <c>POST /v1/reload</c> will return it).</summary>
internal sealed record ReloadResult(
    ReloadStatus Status,
    ReloadTrigger Trigger,
    long Version,
    IReadOnlyList<Diagnostic> Errors,
    IReadOnlyList<string> ServersAdded,
    IReadOnlyList<string> ServersRemoved,
    IReadOnlyList<string> ServersChanged,
    IReadOnlyList<string> PoliciesChanged)
{
    public static string Name(ReloadStatus status) => status switch
    {
        ReloadStatus.Applied => "applied",
        ReloadStatus.Unchanged => "unchanged",
        _ => "failed",
    };

    public static string Name(ReloadTrigger trigger) => trigger switch
    {
        ReloadTrigger.Signal => "signal",
        ReloadTrigger.File => "file",
        _ => "api",
    };
}

/// <summary>
/// Live reload, all or nothing (YARP's <c>ProxyConfigManager</c>): reads the config file and every policy it names,
/// validates all of it, and only then builds the new snapshot and swaps it in (<see cref="SessionEngine.Apply"/>). An
/// invalid snapshot changes nothing: the old one keeps serving, and every error is logged with file, line and path.
/// Every reload that reads something new is recorded as a <c>config_reload</c> audit event with its result. One
/// reload at a time; <see cref="ReloadAsync"/> is the one entry point (SIGHUP, the file watcher, the admin API).
/// </summary>
internal sealed class ConfigReloader(string configPath, SessionEngine engine, ILoggerFactory loggers)
{
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly ILogger _logger = loggers.CreateLogger("Sidecar.Reload");
    private Dictionary<string, string> _fingerprints = Fingerprints(engine.Current.Config);
    private long _applied;
    private long _failed;

    public string ConfigPath { get; } = configPath;

    /// <summary>Called as a reload begins, whatever set it off (systemd hears <c>RELOADING=1</c>).</summary>
    public Action<ReloadTrigger>? Starting { get; set; }

    /// <summary>Called with a reload's result (systemd hears <c>READY=1</c> again).</summary>
    public Action<ReloadResult>? Finished { get; set; }

    /// <summary>Reloads applied since start.</summary>
    public long Applied => Interlocked.Read(ref _applied);

    /// <summary>Reloads refused (the old snapshot kept serving) since start.</summary>
    public long Failed => Interlocked.Read(ref _failed);

    /// <summary>The files the live snapshot was built from: the config and every policy it names.</summary>
    public IReadOnlyCollection<string> Files => _fingerprints.Keys;

    public async Task<ReloadResult> ReloadAsync(ReloadTrigger trigger, CancellationToken cancellationToken = default)
    {
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            Starting?.Invoke(trigger);
            var result = Reload(trigger);
            Finished?.Invoke(result);
            return result;
        }
        finally
        {
            _gate.Release();
        }
    }

    private ReloadResult Reload(ReloadTrigger trigger)
    {
        var current = engine.Current;
        var next = SnapshotBuilder.Load(ConfigPath, current, loggers, out var errors);
        if (next is null)
        {
            Interlocked.Increment(ref _failed);
            foreach (var error in errors)
            {
                _logger.LogError("Reload ({Trigger}) refused: {Error}", ReloadResult.Name(trigger), error.ToString());
            }
            _logger.LogError("Reload ({Trigger}) refused with {Count} error(s): the previous config and policies keep serving",
                ReloadResult.Name(trigger), errors.Count);
            return Record(new ReloadResult(ReloadStatus.Failed, trigger, current.Version, errors, [], [], [], []));
        }

        var fingerprints = Fingerprints(next.Config);
        if (trigger == ReloadTrigger.File && SameFingerprints(fingerprints, _fingerprints))
        {
            // A watcher event for a file whose bytes did not change (an editor's touch, an unrelated file in the folder).
            next.RetireNewUpstreams(current);
            return new ReloadResult(ReloadStatus.Unchanged, trigger, current.Version, [], [], [], [], []);
        }

        var added = new List<string>();
        var removed = new List<string>();
        var changed = new List<string>();
        var policies = new List<string>();
        foreach (var (name, server) in next.Servers)
        {
            if (current.Find(name) is not { } old)
            {
                added.Add(name);
                continue;
            }
            if (!ReferenceEquals(old.Upstream, server.Upstream))
            {
                changed.Add(name);
            }
            if (old.Config.PolicyPath != server.Config.PolicyPath
                || (server.Config.PolicyPath is { } path && fingerprints.GetValueOrDefault(path) != _fingerprints.GetValueOrDefault(path))
                || GrantPoliciesChanged(current.Config, next.Config, name, fingerprints))
            {
                policies.Add(name);
            }
        }
        foreach (var name in current.Servers.Keys)
        {
            if (!next.Servers.ContainsKey(name))
            {
                removed.Add(name);
            }
        }
        engine.Apply(next);
        _fingerprints = fingerprints;
        Interlocked.Increment(ref _applied);
        _logger.LogInformation("Reload ({Trigger}) applied: snapshot {Version}; servers added [{Added}], removed [{Removed}], changed [{Changed}]; policies changed [{Policies}]",
            ReloadResult.Name(trigger), next.Version, string.Join(", ", added), string.Join(", ", removed), string.Join(", ", changed), string.Join(", ", policies));
        return Record(new ReloadResult(ReloadStatus.Applied, trigger, next.Version, [], added, removed, changed, policies));
    }

    /// <summary>Whether a grant's policy for <paramref name="server"/> is another file, or its bytes changed.</summary>
    private bool GrantPoliciesChanged(SidecarConfig current, SidecarConfig next, string server, Dictionary<string, string> fingerprints)
    {
        if (current.Grants.Count != next.Grants.Count)
        {
            return true;
        }
        foreach (var (name, grant) in next.Grants)
        {
            var file = grant.PolicyFor(server);
            var before = current.Grants.GetValueOrDefault(name)?.PolicyFor(server);
            if (file != before || (file is not null && fingerprints.GetValueOrDefault(file) != _fingerprints.GetValueOrDefault(file)))
            {
                return true;
            }
        }
        return false;
    }

    private ReloadResult Record(ReloadResult result)
    {
        var path = ConfigPath;
        engine.Audit.Notify(new AuditNotice("config_reload", json =>
        {
            json.WriteString("result"u8, ReloadResult.Name(result.Status));
            json.WriteString("trigger"u8, ReloadResult.Name(result.Trigger));
            json.WriteString("config"u8, path);
            json.WriteNumber("version"u8, result.Version);
            WriteList(json, "serversAdded"u8, result.ServersAdded);
            WriteList(json, "serversRemoved"u8, result.ServersRemoved);
            WriteList(json, "serversChanged"u8, result.ServersChanged);
            WriteList(json, "policiesChanged"u8, result.PoliciesChanged);
            json.WriteStartArray("errors"u8);
            foreach (var error in result.Errors)
            {
                json.WriteStringValue(error.ToString());
            }
            json.WriteEndArray();
        }));
        return result;
    }

    private static void WriteList(Utf8JsonWriter json, ReadOnlySpan<byte> name, IReadOnlyList<string> values)
    {
        json.WriteStartArray(name);
        foreach (var value in values)
        {
            json.WriteStringValue(value);
        }
        json.WriteEndArray();
    }

    /// <summary>SHA-256 of the config file and of every policy file it names (a file that can't be read: "").</summary>
    private static Dictionary<string, string> Fingerprints(SidecarConfig config)
    {
        var files = new Dictionary<string, string>(StringComparer.Ordinal);
        if (config.File is { } file)
        {
            files[Path.GetFullPath(file)] = Hash(file);
        }
        foreach (var server in config.Servers)
        {
            if (server.PolicyPath is { } policy)
            {
                files[Path.GetFullPath(policy)] = Hash(policy);
            }
        }
        foreach (var grant in config.Grants.Values)
        {
            foreach (var policy in grant.Policies.Values)
            {
                files[Path.GetFullPath(policy)] = Hash(policy);
            }
        }
        return files;
    }

    private static string Hash(string path)
    {
        try
        {
            return Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(path)));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return "";
        }
    }

    private static bool SameFingerprints(Dictionary<string, string> a, Dictionary<string, string> b)
    {
        if (a.Count != b.Count)
        {
            return false;
        }
        foreach (var (file, hash) in a)
        {
            if (!b.TryGetValue(file, out var other) || other != hash)
            {
                return false;
            }
        }
        return true;
    }
}
