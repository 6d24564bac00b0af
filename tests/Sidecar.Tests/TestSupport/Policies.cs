using System.Text;
using Sidecar.Configuration;
using Sidecar.Policy;

namespace Sidecar.Tests.TestSupport;

public static class Policies
{
    public static PolicyModel Compile(string json, string space = "test")
    {
        var diagnostics = new DiagnosticBag("test.json");
        var model = PolicyCompiler.Load(Encoding.UTF8.GetBytes(json), space, diagnostics);
        Assert.True(model is not null, "policy should compile: " + diagnostics);
        return model!;
    }

    public static IReadOnlyList<Diagnostic> Errors(string json)
    {
        var diagnostics = new DiagnosticBag("test.json");
        var model = PolicyCompiler.Load(Encoding.UTF8.GetBytes(json), "test", diagnostics);
        Assert.Null(model);
        Assert.NotEmpty(diagnostics.Items);
        return diagnostics.Items;
    }
}
