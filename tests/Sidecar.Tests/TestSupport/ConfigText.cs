using System.Text;
using Sidecar.Configuration;

namespace Sidecar.Tests.TestSupport;

/// <summary>Reads a sidecar.json made of one stdio server plus the given sections, as if it were /etc/sidecar/sidecar.json.</summary>
public static class ConfigText
{
    public const string Folder = "/etc/sidecar";

    /// <param name="sections">Top-level members after <c>mcpServers</c>, each starting with a comma.</param>
    public static (SidecarConfig? Config, DiagnosticBag Diagnostics) Read(string sections, Func<string, string?>? environment = null)
    {
        var json = $$"""{ "mcpServers": { "a": { "command": "x" } }{{sections}} }""";
        var diagnostics = new DiagnosticBag("sidecar.json");
        var config = SidecarConfigReader.Read(Encoding.UTF8.GetBytes(json), Folder, diagnostics, environment ?? (_ => null));
        return (config, diagnostics);
    }
}
