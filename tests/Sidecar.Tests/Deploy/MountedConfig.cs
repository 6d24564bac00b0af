using Sidecar.Configuration;
using YamlDotNet.RepresentationModel;

namespace Sidecar.Tests.Deploy;

/// <summary>
/// The sidecar container's ConfigMap volumes written out the way the kubelet mounts them (each key a file in the
/// mount's directory, or at an item's path), under a temporary folder that stands for the container's root.
/// </summary>
internal sealed class MountedConfig : IDisposable
{
    public MountedConfig()
    {
        Root = Path.Combine(Path.GetTempPath(), "sidecar-k8s-" + Guid.NewGuid().ToString("N"));
        var configMap = Manifests.One("ConfigMap");
        foreach (var mount in Manifests.SidecarContainer.SeqOrEmpty("volumeMounts").Cast<YamlMappingNode>())
        {
            if (Manifests.Volume(mount.Str("name")).TryMap("configMap") is not { } source)
            {
                continue;
            }
            Assert.Equal(configMap.Name, source.Str("name"));
            var folder = InPod(mount.Str("mountPath"));
            var items = source.SeqOrEmpty("items").Cast<YamlMappingNode>().ToDictionary(i => i.Str("key"), i => i.Str("path"), StringComparer.Ordinal);
            foreach (var (key, text) in Manifests.ConfigMapData)
            {
                if (items.Count > 0 && !items.ContainsKey(key))
                {
                    continue;
                }
                var path = Path.Combine(folder, items.GetValueOrDefault(key, key));
                Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                File.WriteAllText(path, text);
            }
        }
    }

    /// <summary>The temporary folder that stands for the container's <c>/</c>.</summary>
    public string Root { get; }

    /// <summary>Where a path of the container is here.</summary>
    public string InPod(string podPath) => Path.Combine(Root, podPath.TrimStart('/'));

    /// <summary>The config as <c>sidecar run --config</c> reads it in the pod, with <paramref name="environment"/> for <c>${NAME}</c>.</summary>
    public SidecarConfig Load(Func<string, string?> environment)
    {
        var path = InPod(Manifests.ConfigPathInPod);
        Assert.True(File.Exists(path), $"{Manifests.ConfigPathInPod} is not a file of a mounted ConfigMap");
        return SidecarConfigReader.LoadFile(path, environment);
    }

    public void Dispose()
    {
        if (Directory.Exists(Root))
        {
            Directory.Delete(Root, recursive: true);
        }
    }
}

/// <summary>The sidecar container's environment as the Secret gives it, with test values, and which names the config asked for.</summary>
internal sealed class SecretEnvironment
{
    private readonly HashSet<string> _keys = Manifests.SecretValues.Keys.ToHashSet(StringComparer.Ordinal);

    public HashSet<string> Requested { get; } = new(StringComparer.Ordinal);

    /// <summary>A value long enough for any field (the admin token needs 16 bytes) for every key of the Secret; null otherwise.</summary>
    public string? Get(string name)
    {
        Requested.Add(name);
        return _keys.Contains(name) ? $"{name}-value-from-the-secret-0123456789" : null;
    }
}
