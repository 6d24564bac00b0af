using Sidecar.Configuration;

namespace Sidecar.Cli;

/// <summary>What <c>sidecar wrap</c> was asked for, turned into the one-server config the session engine runs.</summary>
internal sealed record WrapRequest(string? Policy, string? Upstream, string[] Headers, string? Config, string? Server, string? Name, string? Audit, string[] Command)
{
    private UpstreamArguments Arguments => new(Upstream, Headers, null, Name, Command);

    public SidecarConfig ToConfig()
    {
        if (Arguments.Count + (Config is not null ? 1 : 0) != 1)
        {
            throw new UsageException("give exactly one upstream: -- COMMAND [ARGS…], --upstream URL, or --config FILE --server NAME");
        }
        Arguments.Check();
        return Config is not null ? FromConfig() : FromArguments();
    }

    private SidecarConfig FromConfig()
    {
        if (Server is null)
        {
            throw new UsageException("--config needs --server NAME (the server of the config to wrap)");
        }
        var config = SidecarConfigReader.LoadFile(Config!);
        var server = config.Servers.FirstOrDefault(s => s.Name == Server)
            ?? throw new UsageException($"{Config} has no server \"{Server}\" (it has: {string.Join(", ", config.Servers.Select(s => s.Name))})");
        if (Policy is not null)
        {
            server = server with { PolicyPath = Path.GetFullPath(Policy) };
        }
        if (Name is not null)
        {
            server = server with { Name = Name };
        }
        var audit = config.Audit;
        if (Audit is not null)
        {
            audit = audit with { Enabled = true, File = FileAt(Audit), Stdout = false };
        }
        else if (ReferenceEquals(audit, AuditConfig.Default))
        {
            audit = audit with { File = FileAt(DefaultAuditPath(server.Name)) };
        }
        if (audit.Stdout)
        {
            throw new UsageException($"{Config}: audit.stdout would mix audit events into the MCP messages on stdout; use a file or http sink with wrap");
        }
        // wrap serves no admin API (nobody could approve): a require_approval call is refused at once, as documented.
        return config with { Servers = [server], Audit = audit, Admin = null };
    }

    private SidecarConfig FromArguments()
    {
        if (Policy is null)
        {
            throw new UsageException("-c/--policy POLICY is required (a server without a policy would have every call denied)");
        }
        if (Server is not null)
        {
            throw new UsageException("--server goes with --config");
        }
        var policy = Path.GetFullPath(Policy);
        var server = Arguments.ToServer(policy);
        var audit = AuditConfig.Default with { File = FileAt(Audit ?? DefaultAuditPath(server.Name)) };
        return new SidecarConfig(null, SidecarConfig.DefaultListen, [server], policy, BlockedCallStyle.Error, GatewayLimits.Default, [], [], audit);
    }

    private static AuditFileConfig FileAt(string path) => new(Path.GetFullPath(path), AuditFileConfig.DefaultMaxBytes, AuditFileConfig.DefaultMaxFiles);

    /// <summary><c>$XDG_STATE_HOME/sidecar/wrap-NAME.jsonl</c>, else <c>~/.local/state/sidecar/wrap-NAME.jsonl</c>.</summary>
    internal static string DefaultAuditPath(string name)
    {
        var state = Environment.GetEnvironmentVariable("XDG_STATE_HOME");
        if (string.IsNullOrEmpty(state) || !Path.IsPathRooted(state))
        {
            var home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile, Environment.SpecialFolderOption.DoNotVerify);
            if (string.IsNullOrEmpty(home) || !Path.IsPathRooted(home))
            {
                throw new UsageException("neither XDG_STATE_HOME nor HOME says where the audit file goes: set one, or give --audit FILE");
            }
            state = Path.Combine(home, ".local", "state");
        }
        var folder = Path.Combine(state, "sidecar");
        Directory.CreateDirectory(folder);
        return Path.Combine(folder, $"wrap-{name}.jsonl");
    }

    /// <summary>A server name from its command (see <see cref="UpstreamArguments.NameOf(string[])"/>).</summary>
    internal static string NameOf(string[] command) => UpstreamArguments.NameOf(command);
}
