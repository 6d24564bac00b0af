namespace Sidecar.Tests.TestSupport;

public static class Repo
{
    private static readonly Lazy<string> s_root = new(() =>
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Sidecar.sln")))
        {
            dir = dir.Parent;
        }
        return dir?.FullName ?? throw new InvalidOperationException("repository root (Sidecar.sln) not found");
    });

    public static string Root => s_root.Value;

    public static string PathOf(params string[] parts) => Path.Combine([Root, .. parts]);

    public static string[] ExamplePolicies => Directory.GetFiles(PathOf("examples", "policies"), "*.json");
}
