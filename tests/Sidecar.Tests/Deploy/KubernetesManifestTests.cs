using System.Text;
using System.Text.RegularExpressions;
using Sidecar.Configuration;
using Sidecar.Policy;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Deploy;

/// <summary>
/// The config and policies shipped in deploy/k8s/sidecar.yaml, laid out the way the pod mounts them (each
/// ConfigMap key at its volumeMount's mountPath), load and compile as `sidecar validate` would.
/// </summary>
public sealed partial class KubernetesManifestTests
{
    [GeneratedRegex(@"^  (?<key>[\w.-]+): \|\s*$")]
    private static partial Regex BlockKey();

    [GeneratedRegex(@"^\s+mountPath: (?<path>\S+)\s*$")]
    private static partial Regex MountPath();

    [GeneratedRegex(@"^\s+subPath: (?<key>\S+)\s*$")]
    private static partial Regex SubPath();

    [Fact]
    public void The_shipped_config_and_policies_load_and_compile()
    {
        var lines = File.ReadAllLines(Repo.PathOf("deploy", "k8s", "sidecar.yaml"));
        var data = ConfigMapData(lines);
        Assert.Contains("sidecar.json", data.Keys);

        var root = Path.Combine(Path.GetTempPath(), "sidecar-k8s-" + Guid.NewGuid().ToString("N"));
        try
        {
            string? configPath = null;
            for (var i = 0; i + 1 < lines.Length; i++)
            {
                if (MountPath().Match(lines[i]) is { Success: true } mount && SubPath().Match(lines[i + 1]) is { Success: true } sub)
                {
                    var path = Path.Combine(root, mount.Groups["path"].Value.TrimStart('/'));
                    Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                    File.WriteAllText(path, data[sub.Groups["key"].Value]);
                    if (sub.Groups["key"].Value == "sidecar.json")
                    {
                        configPath = path;
                    }
                }
            }
            Assert.NotNull(configPath);

            var config = SidecarConfigReader.LoadFile(configPath, name => name == "ICON_TOKEN" ? "token-from-the-secret" : null);
            Assert.Equal("127.0.0.1:8787", config.Listen);
            Assert.True(config.Limits.MaxInFlight < GatewayLimits.Default.MaxInFlight, "the pod's memory limit is small: maxInFlight is set below the default");
            Assert.NotEmpty(config.Servers);
            foreach (var server in config.Servers)
            {
                Assert.NotNull(server.PolicyPath);
                var policy = PolicyCompiler.LoadFile(server.PolicyPath, server.Name);
                Assert.NotNull(policy);
            }
        }
        finally
        {
            if (Directory.Exists(root))
            {
                Directory.Delete(root, recursive: true);
            }
        }
    }

    /// <summary>The ConfigMap's <c>key: |</c> block scalars, unindented.</summary>
    private static Dictionary<string, string> ConfigMapData(string[] lines)
    {
        var data = new Dictionary<string, string>(StringComparer.Ordinal);
        for (var i = 0; i < lines.Length; i++)
        {
            if (BlockKey().Match(lines[i]) is not { Success: true } key)
            {
                continue;
            }
            var text = new StringBuilder();
            while (i + 1 < lines.Length && (lines[i + 1].StartsWith("    ", StringComparison.Ordinal) || lines[i + 1].Length == 0))
            {
                text.AppendLine(lines[++i].Length == 0 ? "" : lines[i][4..]);
            }
            data[key.Groups["key"].Value] = text.ToString();
        }
        return data;
    }
}
