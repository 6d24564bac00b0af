using System.Globalization;
using System.Text.Json;
using Sidecar.Tests.TestSupport;
using YamlDotNet.RepresentationModel;

namespace Sidecar.Tests.Deploy;

/// <summary>
/// The agent pod in deploy/k8s/deployment.yaml: Sidecar as a native sidecar with its probes, its hardening, its
/// resources (sized from the load bench) and a grace period its shutdown fits in.
/// </summary>
public sealed class PodSpecTests
{
    [Fact]
    public void Sidecar_is_a_native_sidecar_an_init_container_that_restarts_always()
    {
        var sidecar = Manifests.SidecarContainer;
        Assert.Equal("Always", sidecar.Str("restartPolicy"));
        Assert.StartsWith("sidecar", sidecar.Str("image"), StringComparison.Ordinal);
        Assert.DoesNotContain(Manifests.PodSpec.Seq("containers").Cast<YamlMappingNode>(), c => c.Str("name") == "sidecar");
        // The agent waits for the sidecar's startup probe only if the sidecar comes first among the init containers.
        Assert.Same(sidecar, Manifests.PodSpec.Seq("initContainers").Children[0]);
        Assert.Equal(["run", "--config", Manifests.ConfigPathInPod], sidecar.Seq("args").Select(a => a.Scalar()));
    }

    [Theory]
    [InlineData("startupProbe", "/readyz")]
    [InlineData("readinessProbe", "/readyz")]
    [InlineData("livenessProbe", "/healthz")]
    public void Each_probe_asks_the_gateway_s_own_port_on_the_pod_ip(string probe, string path)
    {
        using var mounted = new MountedConfig();
        var config = mounted.Load(new SecretEnvironment().Get);
        var sidecar = Manifests.SidecarContainer;
        var httpGet = sidecar.Map(probe).Map("httpGet");
        Assert.Equal(path, httpGet.Str("path"));
        Assert.Equal(Manifests.ListenPort(config), Manifests.ResolvePort(sidecar, httpGet.Str("port")));
        // `host:` would send the probe to that address from the node (127.0.0.1 is the node's own loopback, not the pod's).
        Assert.Null(httpGet.TryGet("host"));
        Assert.NotEqual("HTTPS", httpGet.TryStr("scheme"));
    }

    [Fact]
    public void The_startup_probe_gives_a_slow_start_time_and_liveness_cannot_kill_a_starting_gateway()
    {
        var startup = Manifests.SidecarContainer.Map("startupProbe");
        var budget = Seconds(startup, "periodSeconds", 10) * Seconds(startup, "failureThreshold", 3);
        // Ready in ~50 ms on the bench; a slow node or a cold page cache gets well over that.
        Assert.InRange(budget, 10, 120);
        var liveness = Manifests.SidecarContainer.Map("livenessProbe");
        Assert.True(Seconds(liveness, "failureThreshold", 3) >= 2, "a single slow answer must not restart the gateway");
    }

    [Fact]
    public void The_pod_and_every_container_run_non_root_with_nothing_to_escalate()
    {
        var pod = Manifests.PodSpec.Map("securityContext");
        Assert.Equal("true", pod.Str("runAsNonRoot"));
        Assert.True(int.Parse(pod.Str("runAsUser"), CultureInfo.InvariantCulture) > 0);
        Assert.True(int.Parse(pod.Str("runAsGroup"), CultureInfo.InvariantCulture) > 0);
        Assert.Equal("RuntimeDefault", pod.Map("seccompProfile").Str("type"));

        foreach (var container in Manifests.AllContainers)
        {
            var name = container.Str("name");
            var security = container.Map("securityContext");
            Assert.True(security.TryStr("runAsNonRoot") == "true", $"{name}: runAsNonRoot");
            Assert.True(security.TryStr("readOnlyRootFilesystem") == "true", $"{name}: readOnlyRootFilesystem");
            Assert.True(security.TryStr("allowPrivilegeEscalation") == "false", $"{name}: allowPrivilegeEscalation");
            Assert.NotEqual("true", security.TryStr("privileged"));
            var capabilities = security.Map("capabilities");
            Assert.Equal(["ALL"], capabilities.Seq("drop").Select(c => c.Scalar()));
            Assert.Null(capabilities.TryGet("add"));
            Assert.Equal("RuntimeDefault", security.Map("seccompProfile").Str("type"));
        }

        // The sidecar's numeric user is the image's (the Dockerfile's USER), so the kubelet can verify runAsNonRoot.
        var sidecar = Manifests.SidecarContainer.Map("securityContext");
        Assert.Equal(DockerfileTests.FinalStageUser().User, sidecar.Str("runAsUser"));
        Assert.Equal(DockerfileTests.FinalStageUser().Group, sidecar.Str("runAsGroup"));
        Assert.Equal(pod.Str("runAsUser"), sidecar.Str("runAsUser"));
    }

    [Fact]
    public void The_pod_mounts_no_api_token_and_shares_no_process_namespace()
    {
        var pod = Manifests.PodSpec;
        Assert.Equal("false", pod.Str("automountServiceAccountToken"));
        Assert.NotEqual("true", pod.TryStr("shareProcessNamespace"));
        Assert.NotEqual("true", pod.TryStr("hostNetwork"));
        Assert.NotEqual("true", pod.TryStr("hostPID"));
        var account = Manifests.One("ServiceAccount");
        Assert.Equal(account.Name, pod.Str("serviceAccountName"));
        Assert.Equal("false", account.Root.Str("automountServiceAccountToken"));
    }

    [Fact]
    public void The_grace_period_leaves_sidecar_its_shutdown_grace_after_the_agent_has_had_as_long()
    {
        using var mounted = new MountedConfig();
        var config = mounted.Load(new SecretEnvironment().Get);
        var grace = TimeSpan.FromSeconds(int.Parse(Manifests.PodSpec.Str("terminationGracePeriodSeconds"), CultureInfo.InvariantCulture));
        // Sidecar gets SIGTERM only once the agent has exited, and both spend the same grace period.
        Assert.True(grace > 2 * config.Limits.ShutdownGrace,
            $"terminationGracePeriodSeconds {grace.TotalSeconds} leaves no room for Sidecar's {config.Limits.ShutdownGrace.TotalSeconds} s after the agent's");
    }

    [Fact]
    public void Sidecar_s_requests_and_limits_are_the_documented_figures()
    {
        var resources = Manifests.SidecarContainer.Map("resources");
        var requests = resources.Map("requests");
        var limits = resources.Map("limits");
        Assert.Equal(("250m", "96Mi"), (requests.Str("cpu"), requests.Str("memory")));
        Assert.Equal(("1", "256Mi"), (limits.Str("cpu"), limits.Str("memory")));

        var readme = File.ReadAllText(Path.Combine(Manifests.Folder, "README.md"));
        Assert.Contains($"| CPU | `{requests.Str("cpu")}` | `{limits.Str("cpu")}` |", readme, StringComparison.Ordinal);
        Assert.Contains($"| memory | `{requests.Str("memory")}` | `{limits.Str("memory")}` |", readme, StringComparison.Ordinal);
    }

    [Fact]
    public void The_requests_and_limits_cover_what_the_load_bench_measured()
    {
        using var mounted = new MountedConfig();
        var config = mounted.Load(new SecretEnvironment().Get);
        var resources = Manifests.SidecarContainer.Map("resources");
        var requests = resources.Map("requests");
        var limits = resources.Map("limits");
        var runs = LoadBench.HttpUpstreamSidecarRuns();
        Assert.NotEmpty(runs);

        const double MiB = 1024 * 1024;
        var peakRss = runs.Max(r => r.PeakRssMb) * MiB;
        Assert.True(Manifests.Quantity(requests.Str("memory")) >= peakRss, $"the memory request is below the bench's peak RSS ({peakRss / MiB} MiB)");
        var bodies = 2.0 * config.Limits.MaxInFlight * config.Limits.MaxMessageBytes;
        Assert.True(Manifests.Quantity(limits.Str("memory")) >= peakRss + bodies,
            $"the memory limit is below the peak RSS plus {config.Limits.MaxInFlight} requests and answers of {config.Limits.MaxMessageBytes} bytes");

        // CPU: calls/s × CPU per call, the median over rounds, at the moderate rate and at the heaviest offered rate.
        var moderate = LoadBench.MaxMedianCores(runs.Where(r => r.Rate == 500));
        Assert.True(moderate > 0);
        Assert.True(Manifests.Quantity(requests.Str("cpu")) >= moderate, $"the CPU request is below the {moderate:F3} cores 500 calls/s took");
        var heaviest = LoadBench.MaxMedianCores(runs.Where(r => r.Rate == runs.Max(x => x.Rate)));
        Assert.True(Manifests.Quantity(limits.Str("cpu")) >= heaviest, $"the CPU limit would throttle the bench's heaviest offered load ({heaviest:F3} cores)");
    }

    private static double Seconds(YamlMappingNode probe, string field, double fallback) =>
        probe.TryStr(field) is { } value ? double.Parse(value, CultureInfo.InvariantCulture) : fallback;
}

/// <summary>bench/load/results/latest.jsonl: one line per (target, scenario, round).</summary>
internal static class LoadBench
{
    public sealed record Run(string Target, string Scenario, int Rate, double CallsPerSec, double CpuUsPerCall, double PeakRssMb)
    {
        public double Cores => CallsPerSec * CpuUsPerCall / 1e6;
    }

    /// <summary>
    /// Sidecar forwarding to an HTTP upstream, as in the pod (every variant of audit and limits). The stdio target is
    /// left out: the image has no runtime for stdio servers.
    /// </summary>
    public static List<Run> HttpUpstreamSidecarRuns() =>
        File.ReadLines(Repo.PathOf("bench", "load", "results", "latest.jsonl"))
            .Where(line => line.Length > 0)
            .Select(line =>
            {
                using var json = JsonDocument.Parse(line);
                var r = json.RootElement;
                return new Run(r.GetProperty("target").GetString()!, r.GetProperty("scenario").GetString()!, r.GetProperty("rate").GetInt32(),
                    r.GetProperty("callsPerSec").GetDouble(), r.GetProperty("cpuUsPerCall").GetDouble(), r.GetProperty("peakRssMb").GetDouble());
            })
            .Where(r => r.Target.StartsWith("sidecar-", StringComparison.Ordinal) && r.Target != "sidecar-stdio")
            .ToList();

    /// <summary>The largest, over (target, scenario), of the median over rounds of the cores used.</summary>
    public static double MaxMedianCores(IEnumerable<Run> runs) => runs
        .GroupBy(r => (r.Target, r.Scenario))
        .Select(g =>
        {
            var cores = g.Select(r => r.Cores).Order().ToList();
            return cores.Count % 2 == 1 ? cores[cores.Count / 2] : (cores[cores.Count / 2 - 1] + cores[cores.Count / 2]) / 2;
        })
        .DefaultIfEmpty(0)
        .Max();
}
