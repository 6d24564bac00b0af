using System.Net;
using Sidecar.Configuration;
using Sidecar.Policy;
using Sidecar.Sessions;
using YamlDotNet.RepresentationModel;

namespace Sidecar.Tests.Deploy;

/// <summary>
/// deploy/k8s: the kustomization lists exactly its manifests, and the config and policies in the ConfigMap, laid out
/// the way the pod mounts them and given the Secret's variables, load and compile as <c>sidecar run</c> would.
/// </summary>
public sealed class KubernetesManifestTests
{
    [Fact]
    public void The_kustomization_lists_every_manifest_in_the_folder_and_they_hold_the_pod_s_objects()
    {
        var files = Directory.GetFiles(Manifests.Folder, "*.yaml").Select(Path.GetFileName).Where(f => f != "kustomization.yaml").Order(StringComparer.Ordinal);
        Assert.Equal(files, Manifests.ResourceFiles.Order(StringComparer.Ordinal));
        Assert.Equal(Manifests.ResourceFiles.Count, Manifests.ResourceFiles.Distinct(StringComparer.Ordinal).Count());

        var kinds = Manifests.All.Select(r => r.Kind).ToList();
        Assert.Equal(["ConfigMap", "Deployment", "NetworkPolicy", "Secret", "ServiceAccount"], kinds.Order(StringComparer.Ordinal));
        Assert.All(Manifests.All, r => Assert.False(string.IsNullOrEmpty(r.Root.TryStr("apiVersion")), $"{r} has no apiVersion"));
    }

    [Fact]
    public void The_shipped_config_and_policies_load_and_compile()
    {
        using var mounted = new MountedConfig();
        var environment = new SecretEnvironment();
        var config = mounted.Load(environment.Get);

        Assert.NotEmpty(config.Servers);
        foreach (var server in config.Servers)
        {
            Assert.NotNull(server.PolicyPath);
            Assert.StartsWith(mounted.InPod(Path.GetDirectoryName(Manifests.ConfigPathInPod)!), server.PolicyPath, StringComparison.Ordinal);
            Assert.NotNull(PolicyCompiler.LoadFile(server.PolicyPath, server.Name));
        }
        // Every other key of the ConfigMap is a policy a server uses: nothing stale is shipped.
        var policies = config.Servers.Select(s => Path.GetFileName(s.PolicyPath!)).ToHashSet(StringComparer.Ordinal);
        Assert.All(Manifests.ConfigMapData.Keys.Where(k => k != Path.GetFileName(Manifests.ConfigPathInPod)),
            key => Assert.True(policies.Contains(key), $"ConfigMap key {key} is no server's policy"));
        Assert.NotNull(config.Admin);
    }

    [Fact]
    public void The_config_takes_exactly_the_secret_s_keys_and_the_agent_never_sees_the_secret()
    {
        using var mounted = new MountedConfig();
        var environment = new SecretEnvironment();
        var config = mounted.Load(environment.Get);
        Assert.Equal(Manifests.SecretValues.Keys.Order(StringComparer.Ordinal), environment.Requested.Order(StringComparer.Ordinal));
        Assert.All(config.Servers, server => Assert.Contains(server.Headers.Values, v => v.Contains("-value-from-the-secret-", StringComparison.Ordinal)));

        var secret = Manifests.One("Secret").Name;
        var envFrom = Assert.Single(Manifests.SidecarContainer.Seq("envFrom").Cast<YamlMappingNode>());
        Assert.Equal(secret, envFrom.Map("secretRef").Str("name"));

        // The agent container: no envFrom, no variable from a Secret, no Secret volume mounted.
        var agent = Manifests.AgentContainer;
        Assert.Null(agent.TryGet("envFrom"));
        Assert.All(agent.SeqOrEmpty("env").Cast<YamlMappingNode>(), variable => Assert.Null(variable.TryMap("valueFrom")?.TryGet("secretKeyRef")));
        Assert.All(agent.SeqOrEmpty("volumeMounts").Cast<YamlMappingNode>(),
            mount => Assert.Null(Manifests.Volume(mount.Str("name")).TryGet("secret")));
    }

    [Fact]
    public void The_secret_s_placeholders_are_refused_so_the_example_cannot_run_with_a_published_admin_token()
    {
        using var mounted = new MountedConfig();
        var placeholders = Manifests.SecretValues;
        var refused = Assert.Throws<ConfigValidationException>(() => mounted.Load(name => placeholders.GetValueOrDefault(name)));
        // Only the admin token: the upstream placeholders are plain header values.
        Assert.Contains("admin.token", Assert.Single(refused.Diagnostics).ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public void The_config_map_is_mounted_as_a_directory_at_the_config_s_folder_so_updates_reach_the_watcher()
    {
        var configMap = Manifests.One("ConfigMap").Name;
        var configVolumes = Manifests.PodSpec.Seq("volumes").Cast<YamlMappingNode>()
            .Where(v => v.TryMap("configMap")?.TryStr("name") == configMap).Select(v => v.Str("name")).ToHashSet(StringComparer.Ordinal);
        Assert.NotEmpty(configVolumes);

        var mounts = Manifests.AllContainers.SelectMany(c => c.SeqOrEmpty("volumeMounts").Cast<YamlMappingNode>())
            .Where(m => configVolumes.Contains(m.Str("name"))).ToList();
        var mount = Assert.Single(mounts);
        Assert.Null(mount.TryGet("subPath"));
        Assert.Null(mount.TryGet("subPathExpr"));
        Assert.Contains(mount, Manifests.SidecarContainer.Seq("volumeMounts").Cast<YamlMappingNode>());
        // The config file sits at the top of the mount: its folder, the one Sidecar watches, is where `..data` is swapped.
        Assert.Equal(mount.Str("mountPath").TrimEnd('/'), Path.GetDirectoryName(Manifests.ConfigPathInPod));
        Assert.Contains(Path.GetFileName(Manifests.ConfigPathInPod), Manifests.ConfigMapData.Keys);
        Assert.All(Manifests.ConfigMapData.Keys, key => Assert.DoesNotContain('/', key));
    }

    [Fact]
    public void The_host_check_is_on_for_the_pod_ip_listener_and_admits_the_agent_and_the_probes_only()
    {
        using var mounted = new MountedConfig();
        var config = mounted.Load(new SecretEnvironment().Get);
        Assert.True(SidecarConfigReader.TryParseListen(config.Listen, out var host, out var port));
        var loopback = IPAddress.IsLoopback(host == "localhost" ? IPAddress.Loopback : IPAddress.Parse(host));
        Assert.False(loopback, "the kubelet probes the pod IP: a loopback listener could not answer httpGet probes");
        Assert.NotEmpty(config.AllowedHosts); // on a non-loopback listener, only a non-empty allowedHosts turns the Host check on

        var guard = new OriginGuard(config.AllowedHosts, config.AllowedOrigins);
        foreach (var url in AgentUrls())
        {
            Assert.Null(guard.Check(url.Authority, loopback, []));
        }
        foreach (var probeHost in ProbeHostHeaders())
        {
            Assert.Null(guard.Check(probeHost, loopback, []));
        }
        // What another pod, or a DNS-rebinding page, would send is refused on the MCP routes.
        Assert.NotNull(guard.Check($"10.1.2.3:{port}", loopback, []));
        Assert.NotNull(guard.Check($"mcp.attacker.example:{port}", loopback, []));
    }

    [Fact]
    public void The_agent_s_urls_name_configured_servers_on_the_sidecar_s_loopback_port()
    {
        using var mounted = new MountedConfig();
        var config = mounted.Load(new SecretEnvironment().Get);
        var urls = AgentUrls();
        Assert.NotEmpty(urls);
        foreach (var url in urls)
        {
            Assert.True(IPAddress.TryParse(url.Host, out var address) && IPAddress.IsLoopback(address), $"{url}: the agent talks to Sidecar over loopback");
            Assert.Equal(Manifests.ListenPort(config), url.Port);
            var segments = url.AbsolutePath.Split('/', StringSplitOptions.RemoveEmptyEntries);
            Assert.True(segments is ["servers", _, "mcp"], $"{url} is not /servers/NAME/mcp");
            Assert.Contains(config.Servers, s => s.Name == segments[1]);
        }
        Assert.Equal(config.Servers.Select(s => s.Name).Order(StringComparer.Ordinal),
            urls.Select(u => u.AbsolutePath.Split('/')[2]).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void Everything_sidecar_writes_is_on_an_empty_dir_that_holds_the_whole_rotated_trail()
    {
        using var mounted = new MountedConfig();
        var config = mounted.Load(new SecretEnvironment().Get);
        var container = Manifests.SidecarContainer;
        Assert.Equal("true", container.Map("securityContext").Str("readOnlyRootFilesystem"));
        var writable = container.Seq("volumeMounts").Cast<YamlMappingNode>()
            .Where(m => Manifests.Volume(m.Str("name")).TryGet("emptyDir") is not null).ToList();
        var file = Assert.IsType<AuditFileConfig>(config.Audit.File);
        Assert.False(config.Audit.Http is not null, "an HTTP sink's spool would need a writable path too");

        var mount = Assert.Single(writable, m => IsUnder(file.Path, m.Str("mountPath")));
        Assert.True(IsUnder(container.Str("workingDir"), mount.Str("mountPath")), "relative paths resolve on the writable volume");
        var sizeLimit = Manifests.Quantity(Manifests.Volume(mount.Str("name")).Map("emptyDir").Str("sizeLimit"));
        // The live file plus maxFiles rotated ones (rotation happens at a batch boundary, so a file may run a batch over).
        Assert.True((file.MaxFiles + 1) * (double)file.MaxBytes < sizeLimit,
            $"{file.MaxFiles + 1} audit files of {file.MaxBytes} bytes do not fit the {sizeLimit}-byte emptyDir: the kubelet would evict the pod");
        Assert.True(config.Audit.Stdout, "the emptyDir goes with the pod: the trail is also on stdout for the log collector");
    }

    /// <summary>The agent container's environment values that are URLs.</summary>
    internal static List<Uri> AgentUrls() => Manifests.AgentContainer.SeqOrEmpty("env").Cast<YamlMappingNode>()
        .Select(v => v.TryStr("value")).Where(v => v is not null && v.StartsWith("http", StringComparison.Ordinal))
        .Select(v => new Uri(v!)).ToList();

    /// <summary>The Host header each httpGet probe of the sidecar container sends.</summary>
    private static List<string> ProbeHostHeaders() =>
        new[] { "startupProbe", "readinessProbe", "livenessProbe" }
            .Select(probe => Assert.Single(Manifests.SidecarContainer.Map(probe).Map("httpGet").SeqOrEmpty("httpHeaders").Cast<YamlMappingNode>(),
                h => string.Equals(h.Str("name"), "Host", StringComparison.OrdinalIgnoreCase)).Str("value"))
            .ToList();

    private static bool IsUnder(string path, string folder) =>
        path.StartsWith(folder.TrimEnd('/') + "/", StringComparison.Ordinal) || path == folder.TrimEnd('/');
}
