using System.Globalization;
using System.Text.Json;
using System.Xml.Linq;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Deploy;

/// <summary>
/// The Dockerfile: a NativeAOT publish in the SDK image, shipped alone on a chiseled runtime-deps base of the same
/// Ubuntu release, as a numeric non-root user, with the binary as the entry point and the pod's command as default.
/// </summary>
public sealed class DockerfileTests
{
    internal sealed record Instruction(string Keyword, string Arguments);

    internal sealed record Stage(string Image, string? Name, List<Instruction> Instructions)
    {
        public IEnumerable<string> All(string keyword) =>
            Instructions.Where(i => i.Keyword == keyword).Select(i => i.Arguments);
    }

    /// <summary>The Dockerfile's stages: comments dropped, continuation lines joined.</summary>
    internal static List<Stage> Stages()
    {
        var logical = new List<string>();
        var current = "";
        foreach (var raw in File.ReadAllLines(Repo.PathOf("Dockerfile")))
        {
            var line = raw.Trim();
            if (line.StartsWith('#') || (line.Length == 0 && current.Length == 0))
            {
                continue;
            }
            if (line.EndsWith('\\'))
            {
                current += line[..^1] + " ";
                continue;
            }
            logical.Add(current + line);
            current = "";
        }
        var stages = new List<Stage>();
        foreach (var line in logical.Where(l => l.Length > 0))
        {
            var space = line.IndexOf(' ', StringComparison.Ordinal);
            var instruction = new Instruction(line[..space].ToUpperInvariant(), line[(space + 1)..].Trim());
            if (instruction.Keyword == "FROM")
            {
                var parts = instruction.Arguments.Split(' ', StringSplitOptions.RemoveEmptyEntries).Where(p => !p.StartsWith("--", StringComparison.Ordinal)).ToList();
                stages.Add(new Stage(parts[0], parts.Count == 3 && parts[1].Equals("AS", StringComparison.OrdinalIgnoreCase) ? parts[2] : null, []));
            }
            else
            {
                Assert.True(stages.Count > 0 || instruction.Keyword == "ARG", $"{instruction.Keyword} before the first FROM");
                if (stages.Count > 0)
                {
                    stages[^1].Instructions.Add(instruction);
                }
            }
        }
        return stages;
    }

    /// <summary>The final stage's <c>USER uid:gid</c>.</summary>
    internal static (string User, string Group) FinalStageUser()
    {
        var user = Assert.Single(Stages()[^1].All("USER"));
        var parts = user.Split(':');
        Assert.Equal(2, parts.Length);
        return (parts[0], parts[1]);
    }

    private static string[] ExecForm(string arguments) => JsonSerializer.Deserialize<string[]>(arguments)
        ?? throw new Xunit.Sdk.XunitException($"not an exec-form JSON array: {arguments}");

    [Fact]
    public void The_final_stage_is_a_chiseled_runtime_deps_image_of_the_build_stage_s_release()
    {
        var stages = Stages();
        Assert.True(stages.Count >= 2, "multi-stage: the SDK stays in the build stage");
        var final = stages[^1];
        Assert.Contains("/dotnet/runtime-deps:", final.Image, StringComparison.Ordinal);
        var tag = final.Image[(final.Image.LastIndexOf(':') + 1)..];
        Assert.Contains("chiseled", tag, StringComparison.Ordinal);

        var build = Assert.Single(stages, s => s.Image.Contains("/dotnet/sdk:", StringComparison.Ordinal));
        // A NativeAOT binary needs the glibc it was linked against: build and run on the same release.
        var release = tag.Split('-')[1];
        Assert.EndsWith("-" + release, build.Image, StringComparison.Ordinal);
        Assert.Equal(tag.Split('-')[0], build.Image[(build.Image.LastIndexOf(':') + 1)..].Split('-')[0]);
    }

    [Fact]
    public void The_build_stage_installs_the_native_toolchain_and_publishes_sidecar_in_release()
    {
        var build = Assert.Single(Stages(), s => s.Image.Contains("/dotnet/sdk:", StringComparison.Ordinal));
        var runs = build.All("RUN").ToList();
        Assert.Contains(runs, r => r.Contains("apt-get install", StringComparison.Ordinal) && r.Contains(" clang", StringComparison.Ordinal) && r.Contains(" zlib1g-dev", StringComparison.Ordinal));
        var publish = Assert.Single(runs, r => r.Contains("dotnet publish", StringComparison.Ordinal));
        Assert.Contains("dotnet publish src/Sidecar ", publish, StringComparison.Ordinal);
        Assert.Contains("-c Release", publish, StringComparison.Ordinal);
        Assert.Contains(" -r ", publish, StringComparison.Ordinal);
        // NativeAOT is the project's own setting, not the Dockerfile's.
        var project = XDocument.Load(Repo.PathOf("src", "Sidecar", "Sidecar.csproj"));
        Assert.Equal("true", project.Descendants("PublishAot").Single().Value);
    }

    [Fact]
    public void The_restore_layer_copies_every_project_the_binary_is_built_from()
    {
        var build = Assert.Single(Stages(), s => s.Image.Contains("/dotnet/sdk:", StringComparison.Ordinal));
        var copied = build.All("COPY").SelectMany(c => c.Split(' ', StringSplitOptions.RemoveEmptyEntries).SkipLast(1)).ToHashSet(StringComparer.Ordinal);
        var projects = new List<string> { "src/Sidecar/Sidecar.csproj" };
        for (var i = 0; i < projects.Count; i++)
        {
            var folder = Path.GetDirectoryName(projects[i])!;
            foreach (var reference in XDocument.Load(Repo.PathOf(projects[i])).Descendants("ProjectReference"))
            {
                var path = Path.GetRelativePath(Repo.Root, Path.GetFullPath(Path.Combine(Repo.Root, folder, reference.Attribute("Include")!.Value.Replace('\\', '/'))));
                if (!projects.Contains(path))
                {
                    projects.Add(path);
                }
            }
        }
        Assert.All(projects, p => Assert.Contains(p, copied));
        foreach (var file in new[] { "global.json", "Directory.Build.props", "Directory.Packages.props" })
        {
            Assert.Contains(file, copied);
        }
        Assert.All(copied, source => Assert.True(File.Exists(Repo.PathOf(source)) || Directory.Exists(Repo.PathOf(source)), $"COPY {source}: no such path"));
    }

    [Fact]
    public void The_image_runs_the_binary_as_a_numeric_non_root_user_with_the_pod_s_command()
    {
        var stages = Stages();
        var final = stages[^1];
        var (user, group) = FinalStageUser();
        Assert.True(int.Parse(user, CultureInfo.InvariantCulture) > 0, "USER is a non-root UID");
        Assert.True(int.Parse(group, CultureInfo.InvariantCulture) > 0, "USER's group is not root");

        var entrypoint = ExecForm(Assert.Single(final.All("ENTRYPOINT")));
        var binary = Assert.Single(entrypoint);
        var build = Assert.Single(stages, s => s.Image.Contains("/dotnet/sdk:", StringComparison.Ordinal));
        Assert.Contains(final.All("COPY"), c => c.StartsWith($"--from={build.Name} ", StringComparison.Ordinal) && c.EndsWith(" " + binary, StringComparison.Ordinal));
        Assert.Equal("/sidecar", binary[binary.LastIndexOf('/')..]);

        // The default command is the one the Deployment runs, so the image alone behaves as it does in the pod.
        var command = ExecForm(Assert.Single(final.All("CMD")));
        Assert.Equal(Manifests.SidecarContainer.Seq("args").Select(a => a.Scalar()), command);
        using var mounted = new MountedConfig();
        var config = mounted.Load(new SecretEnvironment().Get);
        Assert.Equal(Manifests.ListenPort(config).ToString(CultureInfo.InvariantCulture), Assert.Single(final.All("EXPOSE")));
    }

    [Fact]
    public void The_build_context_leaves_out_build_output_packages_and_history_but_not_the_sources()
    {
        var ignored = File.ReadAllLines(Repo.PathOf(".dockerignore")).Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToHashSet(StringComparer.Ordinal);
        foreach (var pattern in new[] { "**/bin/", "**/obj/", "**/node_modules/", ".git/" })
        {
            Assert.Contains(pattern, ignored);
        }
        // Nothing the build copies is excluded (the patterns here are folder names or files, matched by prefix).
        Assert.DoesNotContain(ignored, p => p.StartsWith('!'));
        var sources = Stages().SelectMany(s => s.All("COPY")).Where(c => !c.StartsWith("--from=", StringComparison.Ordinal))
            .SelectMany(c => c.Split(' ', StringSplitOptions.RemoveEmptyEntries).SkipLast(1)).ToList();
        Assert.NotEmpty(sources);
        foreach (var source in sources)
        {
            Assert.DoesNotContain(ignored, p => !p.StartsWith("**/", StringComparison.Ordinal)
                && (source == p.TrimEnd('/') || source.StartsWith(p.EndsWith('/') ? p : p + "/", StringComparison.Ordinal)));
        }
    }
}
