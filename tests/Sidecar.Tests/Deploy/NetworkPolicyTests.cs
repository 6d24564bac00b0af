using System.Globalization;
using YamlDotNet.RepresentationModel;

namespace Sidecar.Tests.Deploy;

/// <summary>
/// deploy/k8s/networkpolicy.yaml: the agent pod accepts only the monitoring namespace on Sidecar's port, and reaches
/// DNS, the upstreams the config names (on their ports) and public HTTPS, nothing else.
/// </summary>
public sealed class NetworkPolicyTests
{
    private static YamlMappingNode Spec => Manifests.One("NetworkPolicy").Root.Map("spec");

    [Fact]
    public void It_selects_the_agent_pod_for_both_directions()
    {
        var selector = Spec.Map("podSelector").Map("matchLabels");
        var labels = Manifests.PodTemplate.Map("metadata").Map("labels");
        Assert.NotEmpty(selector.Children);
        foreach (var (key, value) in selector.Children)
        {
            Assert.Equal(value.Scalar(), labels.TryStr(key.Scalar()));
        }
        Assert.Equal(["Egress", "Ingress"], Spec.Seq("policyTypes").Select(t => t.Scalar()).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void Ingress_is_only_sidecar_s_port_and_only_from_named_pods_of_a_named_namespace()
    {
        using var mounted = new MountedConfig();
        var config = mounted.Load(new SecretEnvironment().Get);
        var port = Manifests.ListenPort(config);
        var rules = Spec.SeqOrEmpty("ingress").Cast<YamlMappingNode>().ToList();
        foreach (var rule in rules)
        {
            var ports = rule.Seq("ports").Cast<YamlMappingNode>().ToList();
            Assert.All(ports, p => Assert.Equal((port.ToString(CultureInfo.InvariantCulture), "TCP"), (p.Str("port"), p.TryStr("protocol") ?? "TCP")));
            // An empty or missing `from` admits everyone; an ipBlock admits addresses; a bare podSelector every such pod of this namespace.
            var peers = rule.Seq("from").Cast<YamlMappingNode>().ToList();
            Assert.NotEmpty(peers);
            foreach (var peer in peers)
            {
                Assert.Null(peer.TryGet("ipBlock"));
                Assert.NotEmpty(peer.Map("namespaceSelector").Map("matchLabels").Children);
                Assert.NotEmpty(peer.Map("podSelector").Map("matchLabels").Children);
            }
        }
        // The admin API is on loopback: no rule may open its port.
        var admin = config.Admin!.Listen;
        Assert.StartsWith("127.0.0.1:", admin, StringComparison.Ordinal);
        Assert.DoesNotContain(rules.SelectMany(r => r.Seq("ports").Cast<YamlMappingNode>()), p => admin.EndsWith(":" + p.Str("port"), StringComparison.Ordinal));
    }

    [Fact]
    public void Every_egress_rule_names_its_ports_and_destinations_and_dns_is_allowed()
    {
        var rules = Spec.Seq("egress").Cast<YamlMappingNode>().ToList();
        Assert.All(rules, rule =>
        {
            Assert.NotEmpty(rule.Seq("ports").Children);
            Assert.NotEmpty(rule.Seq("to").Children);
        });
        var dns = Assert.Single(rules, r => r.Seq("ports").Cast<YamlMappingNode>().Any(p => p.Str("port") == "53" && p.Str("protocol") == "UDP"));
        var peer = Assert.Single(dns.Seq("to").Cast<YamlMappingNode>());
        Assert.Equal("kube-system", peer.Map("namespaceSelector").Map("matchLabels").Str("kubernetes.io/metadata.name"));
        Assert.Contains(dns.Seq("ports").Cast<YamlMappingNode>(), p => p.Str("port") == "53" && p.Str("protocol") == "TCP");
    }

    [Fact]
    public void Each_upstream_of_the_config_is_reachable_in_its_namespace_on_its_port()
    {
        using var mounted = new MountedConfig();
        var config = mounted.Load(new SecretEnvironment().Get);
        var rules = Spec.Seq("egress").Cast<YamlMappingNode>().ToList();
        Assert.NotEmpty(config.Servers);
        foreach (var server in config.Servers)
        {
            var url = server.Url!;
            // NAME.NAMESPACE.svc[.cluster.local]: a Service of another namespace.
            var labels = url.Host.Split('.');
            Assert.True(labels.Length >= 3 && labels[2] == "svc", $"{server.Name}: {url.Host} is not a Service name");
            var port = url.Port.ToString(CultureInfo.InvariantCulture);
            Assert.Contains(rules, rule =>
                rule.Seq("ports").Cast<YamlMappingNode>().Any(p => p.Str("port") == port)
                && rule.Seq("to").Cast<YamlMappingNode>().Any(to =>
                    to.TryMap("namespaceSelector")?.TryMap("matchLabels")?.TryStr("kubernetes.io/metadata.name") == labels[1]
                    && to.TryMap("podSelector")?.TryMap("matchLabels")?.Children.Count > 0));
        }
    }

    [Fact]
    public void Address_blocks_are_public_https_only_never_the_metadata_service_or_private_ranges()
    {
        var rules = Spec.Seq("egress").Cast<YamlMappingNode>()
            .Where(rule => rule.Seq("to").Cast<YamlMappingNode>().Any(to => to.TryGet("ipBlock") is not null)).ToList();
        foreach (var rule in rules)
        {
            Assert.Equal(["443"], rule.Seq("ports").Cast<YamlMappingNode>().Select(p => p.Str("port")));
            foreach (var block in rule.Seq("to").Cast<YamlMappingNode>().Select(to => to.Map("ipBlock")))
            {
                if (block.Str("cidr") != "0.0.0.0/0")
                {
                    continue;
                }
                var except = block.Seq("except").Select(e => e.Scalar()).ToHashSet(StringComparer.Ordinal);
                Assert.Superset(new HashSet<string>(["169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"], StringComparer.Ordinal), except);
            }
        }
    }
}
