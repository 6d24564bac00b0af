using System.Globalization;
using System.Text;
using Sidecar.Configuration;
using Sidecar.Tests.TestSupport;
using YamlDotNet.RepresentationModel;

namespace Sidecar.Tests.Deploy;

/// <summary>
/// deploy/k8s as kustomization.yaml lists it: every YAML document of every resource file, and the pieces the tests
/// look at (the pod spec, the sidecar and agent containers, the ConfigMap's config laid out as the pod mounts it).
/// </summary>
internal static class Manifests
{
    public static string Folder => Repo.PathOf("deploy", "k8s");

    /// <summary>One object of a manifest file.</summary>
    public sealed record Resource(string File, YamlMappingNode Root)
    {
        public string Kind => Root.Str("kind");

        public string Name => Root.Map("metadata").Str("name");

        public override string ToString() => $"{Kind}/{Name} ({File})";
    }

    public static YamlMappingNode Kustomization => Assert.Single(ParseFile(Path.Combine(Folder, "kustomization.yaml")));

    /// <summary>The files under <c>resources:</c>, in order.</summary>
    public static IReadOnlyList<string> ResourceFiles => Kustomization.Seq("resources").Select(node => node.Scalar()).ToList();

    private static readonly Lazy<IReadOnlyList<Resource>> s_all = new(() =>
        ResourceFiles.SelectMany(file => ParseFile(Path.Combine(Folder, file)).Select(root => new Resource(file, root))).ToList());

    public static IReadOnlyList<Resource> All => s_all.Value;

    public static Resource One(string kind) => Assert.Single(All, resource => resource.Kind == kind);

    public static Resource Deployment => One("Deployment");

    public static YamlMappingNode PodTemplate => Deployment.Root.Map("spec").Map("template");

    public static YamlMappingNode PodSpec => PodTemplate.Map("spec");

    /// <summary>The Sidecar container: the init container that runs the sidecar image.</summary>
    public static YamlMappingNode SidecarContainer => Assert.Single(
        PodSpec.Seq("initContainers").Cast<YamlMappingNode>(), container => container.Str("name") == "sidecar");

    public static YamlMappingNode AgentContainer => Assert.Single(
        PodSpec.Seq("containers").Cast<YamlMappingNode>(), container => container.Str("name") == "agent");

    public static IEnumerable<YamlMappingNode> AllContainers =>
        PodSpec.Seq("initContainers").Concat(PodSpec.Seq("containers")).Cast<YamlMappingNode>();

    public static YamlMappingNode Volume(string name) => Assert.Single(
        PodSpec.Seq("volumes").Cast<YamlMappingNode>(), volume => volume.Str("name") == name);

    /// <summary>The ConfigMap's data: file name to contents.</summary>
    public static IReadOnlyDictionary<string, string> ConfigMapData =>
        One("ConfigMap").Root.Map("data").Children.ToDictionary(e => e.Key.Scalar(), e => e.Value.Scalar(), StringComparer.Ordinal);

    /// <summary>The Secret's keys and values (<c>stringData</c>, or base64 <c>data</c>).</summary>
    public static IReadOnlyDictionary<string, string> SecretValues
    {
        get
        {
            var secret = One("Secret").Root;
            var values = new Dictionary<string, string>(StringComparer.Ordinal);
            if (secret.TryMap("stringData") is { } stringData)
            {
                foreach (var (key, value) in stringData.Children)
                {
                    values[key.Scalar()] = value.Scalar();
                }
            }
            if (secret.TryMap("data") is { } data)
            {
                foreach (var (key, value) in data.Children)
                {
                    values[key.Scalar()] = Encoding.UTF8.GetString(Convert.FromBase64String(value.Scalar()));
                }
            }
            return values;
        }
    }

    /// <summary>The path after <c>--config</c> in the sidecar container's arguments.</summary>
    public static string ConfigPathInPod
    {
        get
        {
            var args = SidecarContainer.Seq("args").Select(node => node.Scalar()).ToList();
            var at = args.IndexOf("--config");
            Assert.True(at >= 0 && at + 1 < args.Count, "the sidecar container's args name --config PATH");
            return args[at + 1];
        }
    }

    public static List<YamlMappingNode> ParseFile(string path) => Parse(File.ReadAllText(path));

    public static List<YamlMappingNode> Parse(string text)
    {
        var stream = new YamlStream();
        stream.Load(new StringReader(text));
        return stream.Documents.Where(doc => doc.RootNode is YamlMappingNode { Children.Count: > 0 })
            .Select(doc => (YamlMappingNode)doc.RootNode).ToList();
    }

    /// <summary>A Kubernetes quantity in base units: cores for CPU (<c>250m</c> = 0.25), bytes for memory (<c>96Mi</c>).</summary>
    public static double Quantity(string text)
    {
        (string Suffix, double Factor)[] suffixes =
        [
            ("Ki", 1024.0), ("Mi", 1024.0 * 1024), ("Gi", 1024.0 * 1024 * 1024),
            ("k", 1e3), ("M", 1e6), ("G", 1e9), ("m", 1e-3),
        ];
        foreach (var (suffix, factor) in suffixes)
        {
            if (text.EndsWith(suffix, StringComparison.Ordinal))
            {
                return double.Parse(text[..^suffix.Length], NumberStyles.Float, CultureInfo.InvariantCulture) * factor;
            }
        }
        return double.Parse(text, NumberStyles.Float, CultureInfo.InvariantCulture);
    }

    /// <summary>
    /// A container port by number or by the name a container gives it (<c>port: mcp</c>).
    /// </summary>
    public static int ResolvePort(YamlMappingNode container, string port)
    {
        if (int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out var number))
        {
            return number;
        }
        var named = Assert.Single(container.Seq("ports").Cast<YamlMappingNode>(), p => p.TryStr("name") == port);
        return int.Parse(named.Str("containerPort"), CultureInfo.InvariantCulture);
    }

    /// <summary>The port of a <c>HOST:PORT</c> listen address.</summary>
    public static int ListenPort(SidecarConfig config)
    {
        Assert.True(SidecarConfigReader.TryParseListen(config.Listen, out _, out var port), config.Listen);
        return port;
    }
}

/// <summary>Navigation over YamlDotNet's representation model that fails the test, with the key, when a node is missing.</summary>
internal static class YamlNav
{
    public static YamlNode? TryGet(this YamlMappingNode map, string key) =>
        map.Children.TryGetValue(new YamlScalarNode(key), out var value) ? value : null;

    public static YamlNode Get(this YamlMappingNode map, string key) =>
        map.TryGet(key) ?? throw new Xunit.Sdk.XunitException($"missing \"{key}\" in {Describe(map)}");

    public static YamlMappingNode Map(this YamlMappingNode map, string key) =>
        map.Get(key) as YamlMappingNode ?? throw new Xunit.Sdk.XunitException($"\"{key}\" is not a mapping in {Describe(map)}");

    public static YamlMappingNode? TryMap(this YamlMappingNode map, string key) => map.TryGet(key) as YamlMappingNode;

    public static YamlSequenceNode Seq(this YamlMappingNode map, string key) =>
        map.Get(key) as YamlSequenceNode ?? throw new Xunit.Sdk.XunitException($"\"{key}\" is not a list in {Describe(map)}");

    /// <summary>The list under <paramref name="key"/>, empty when there is none.</summary>
    public static IEnumerable<YamlNode> SeqOrEmpty(this YamlMappingNode map, string key) =>
        map.TryGet(key) is YamlSequenceNode seq ? seq.Children : [];

    public static string Str(this YamlMappingNode map, string key) => map.Get(key).Scalar();

    public static string? TryStr(this YamlMappingNode map, string key) => (map.TryGet(key) as YamlScalarNode)?.Value;

    public static string Scalar(this YamlNode node) =>
        (node as YamlScalarNode)?.Value ?? throw new Xunit.Sdk.XunitException($"expected a scalar at line {node.Start.Line}");

    private static string Describe(YamlMappingNode map) => $"the mapping at line {map.Start.Line}";
}
