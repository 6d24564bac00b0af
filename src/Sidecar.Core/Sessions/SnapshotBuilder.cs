using System.Collections.Frozen;
using System.Text;
using Microsoft.Extensions.Logging;
using Sidecar.Configuration;
using Sidecar.Policy;
using Sidecar.Upstreams;

namespace Sidecar.Sessions;

/// <summary>
/// Builds a whole <see cref="GatewaySnapshot"/> from a config: every policy it names is read and compiled, and every
/// error of every file is collected, before anything is built. Nothing half-valid is ever returned. Connectors of
/// servers whose definition did not change are taken over from the previous snapshot.
/// </summary>
internal static class SnapshotBuilder
{
    /// <summary>Loads the config file and builds from it; null with every error (file, line, path) in <paramref name="errors"/>.</summary>
    public static GatewaySnapshot? Load(string configPath, GatewaySnapshot? previous, ILoggerFactory loggers, out IReadOnlyList<Diagnostic> errors)
    {
        SidecarConfig config;
        try
        {
            config = SidecarConfigReader.LoadFile(configPath);
        }
        catch (ConfigValidationException ex)
        {
            errors = ex.Diagnostics;
            return null;
        }
        return Build(config, previous, loggers, out errors);
    }

    /// <summary>Compiles every policy of <paramref name="config"/>; null with every error in <paramref name="errors"/>.</summary>
    public static GatewaySnapshot? Build(SidecarConfig config, GatewaySnapshot? previous, ILoggerFactory loggers, out IReadOnlyList<Diagnostic> errors)
    {
        var problems = new List<Diagnostic>();
        var policies = new Dictionary<string, PolicyModel>(StringComparer.Ordinal);
        var grantPolicies = new Dictionary<string, Dictionary<string, PolicyModel>>(StringComparer.Ordinal);
        var compiled = new Dictionary<(string Server, string File), PolicyModel>();
        var failed = new HashSet<string>(StringComparer.Ordinal); // a broken grant policy is reported once, not once per server
        foreach (var server in config.Servers)
        {
            try
            {
                policies[server.Name] = LoadPolicy(server);
            }
            catch (ConfigValidationException ex)
            {
                problems.AddRange(ex.Diagnostics);
            }
            var perGrant = grantPolicies[server.Name] = new Dictionary<string, PolicyModel>(StringComparer.Ordinal);
            foreach (var (name, grant) in config.Grants)
            {
                var file = grant.PolicyFor(server.Name);
                try
                {
                    perGrant[name] = file is null
                        ? NoGrantPolicy(name, server.Name)
                        : compiled.TryGetValue((server.Name, file), out var model) ? model
                        : compiled[(server.Name, file)] = PolicyCompiler.LoadFile(file, server.Name);
                }
                catch (ConfigValidationException ex) when (failed.Add(file!))
                {
                    problems.AddRange(ex.Diagnostics);
                }
                catch (ConfigValidationException)
                {
                    // Already reported for another server.
                }
            }
        }
        if (previous is not null && previous.Config.Listen != config.Listen)
        {
            problems.Add(new Diagnostic(config.File, "$.listen", default,
                $"\"listen\" changed from {previous.Config.Listen} to {config.Listen}: a new address needs a restart"));
        }
        if (previous is not null && previous.Config.Admin?.Listen != config.Admin?.Listen)
        {
            problems.Add(new Diagnostic(config.File, "$.admin.listen", default,
                $"\"admin.listen\" changed from {previous.Config.Admin?.Listen ?? "(no admin API)"} to {config.Admin?.Listen ?? "(no admin API)"}: the admin listener changes only on a restart"));
        }
        if (previous is not null && previous.Config.RateLimits != config.RateLimits)
        {
            // Records compare by value; the connection string is never put in the message (it may hold a password).
            problems.Add(new Diagnostic(config.File, "$.rateLimits", default,
                $"\"rateLimits\" changed (store {previous.Config.RateLimits.Store.ToString().ToLowerInvariant()} to {config.RateLimits.Store.ToString().ToLowerInvariant()}, or its redis settings): where counters live changes only on a restart"));
        }
        errors = problems;
        if (problems.Count > 0)
        {
            return null;
        }

        var servers = new Dictionary<string, ServerState>(StringComparer.Ordinal);
        foreach (var server in config.Servers)
        {
            var old = previous?.Find(server.Name);
            var upstream = old is not null && old.Config.SameUpstream(server) && previous!.Config.Limits == config.Limits
                ? old.Upstream
                : new UpstreamHandle(UpstreamConnectors.Create(server, config.Limits, loggers));
            // What the server's pinned tools were last seen as is a fact about the server, kept while it stays the same
            // server (same command or URL): a reload that only edits a pin is checked against it at once.
            var pinWatch = old is not null && old.Config.SameUpstream(server) ? old.Pins.Watch : null;
            servers[server.Name] = new ServerState(server, policies[server.Name], upstream, config.Limits.SessionsPerServer(server),
                grantPolicies[server.Name].ToFrozenDictionary(StringComparer.Ordinal), pinWatch);
        }
        return new GatewaySnapshot(config, servers.ToFrozenDictionary(StringComparer.Ordinal), (previous?.Version ?? 0) + 1);
    }

    /// <summary>
    /// Loads the server's policy (its counters named after the server, so they survive a reload); a server with no
    /// policy at all gets one that denies everything (fail closed).
    /// </summary>
    public static PolicyModel LoadPolicy(ServerConfig server)
    {
        return server.PolicyPath is null
            ? DenyAll(server.Name, $"no policy configured for server {server.Name}: everything is denied")
            : PolicyCompiler.LoadFile(server.PolicyPath, server.Name);
    }

    /// <summary>
    /// The policy <paramref name="grant"/> gives <paramref name="server"/> (as <see cref="ServerState.PolicyFor"/> finds
    /// it in a snapshot): the grant's <c>policies[server]</c>, else <c>policies["*"]</c>, else one that denies everything.
    /// </summary>
    public static PolicyModel LoadGrantPolicy(GrantConfig grant, ServerConfig server)
        => grant.PolicyFor(server.Name) is { } file ? PolicyCompiler.LoadFile(file, server.Name) : NoGrantPolicy(grant.Name, server.Name);

    private static PolicyModel NoGrantPolicy(string grant, string server)
        => DenyAll(server, $"grant {grant} has no policy for server {server}: everything is denied");

    /// <summary>A policy that denies every tool (fail closed), saying why in its description.</summary>
    private static PolicyModel DenyAll(string server, string why)
    {
        var json = $$"""{ "version": "1", "default": "deny", "description": "{{System.Text.Json.JsonEncodedText.Encode(why)}}" }""";
        return PolicyCompiler.Load(Encoding.UTF8.GetBytes(json), server, new DiagnosticBag())!;
    }
}
