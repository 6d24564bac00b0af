using System.Diagnostics;
using Xunit.Abstractions;
using YamlDotNet.RepresentationModel;

namespace Sidecar.Tests.Deploy;

/// <summary>
/// What <c>kubectl kustomize deploy/k8s</c> renders (offline; no cluster needed) is the manifests as written: the same
/// objects, the ConfigMap's files unchanged (a generator's hash suffix would turn an update into a new ConfigMap and
/// a rollout instead of a reload). Runs where kubectl is installed; the YAML tests beside it always run.
/// </summary>
public sealed class KustomizeTests(ITestOutputHelper output)
{
    private static string? Kubectl()
    {
        foreach (var folder in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            var path = Path.Combine(folder, "kubectl");
            if (File.Exists(path))
            {
                return path;
            }
        }
        return null;
    }

    [Fact]
    public async Task Kubectl_kustomize_renders_exactly_the_manifests()
    {
        if (Kubectl() is not { } kubectl)
        {
            output.WriteLine("kubectl is not on PATH: the rendered output is not checked here");
            return;
        }
        var start = new ProcessStartInfo(kubectl)
        {
            ArgumentList = { "kustomize", Manifests.Folder },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new Xunit.Sdk.XunitException("kubectl kustomize did not finish within 60 s");
        }
        Assert.True(process.ExitCode == 0, $"kubectl kustomize failed: {await stderr}");

        var rendered = Manifests.Parse(await stdout).Select(root => new Manifests.Resource("(rendered)", root)).ToList();
        Assert.Equal(Manifests.All.Select(r => $"{r.Kind}/{r.Name}").Order(StringComparer.Ordinal),
            rendered.Select(r => $"{r.Kind}/{r.Name}").Order(StringComparer.Ordinal));

        var configMap = Assert.Single(rendered, r => r.Kind == "ConfigMap").Root.Map("data");
        Assert.Equal(Manifests.ConfigMapData.OrderBy(e => e.Key, StringComparer.Ordinal),
            configMap.Children.ToDictionary(e => e.Key.Scalar(), e => e.Value.Scalar(), StringComparer.Ordinal).OrderBy(e => e.Key, StringComparer.Ordinal));

        var pod = Assert.Single(rendered, r => r.Kind == "Deployment").Root.Map("spec").Map("template").Map("spec");
        var sidecar = Assert.Single(pod.Seq("initContainers").Cast<YamlMappingNode>(), c => c.Str("name") == "sidecar");
        Assert.Equal("Always", sidecar.Str("restartPolicy"));
        Assert.Equal(Manifests.SidecarContainer.Str("image"), sidecar.Str("image"));
    }
}
