using System.CommandLine;
using Sidecar.Configuration;
using Sidecar.Policy;

namespace Sidecar.Cli;

/// <summary><c>sidecar validate FILE...</c>: checks policy files; prints every error with file, line, column and JSON path.</summary>
internal static class ValidateCommand
{
    public static Command Create()
    {
        var files = new Argument<string[]>("files")
        {
            Description = "Policy files (JSON) to check",
            Arity = ArgumentArity.OneOrMore,
        };
        var command = new Command("validate", "Check policy files and report every error with its path and line");
        command.Arguments.Add(files);
        command.SetAction(parse =>
        {
            var output = parse.InvocationConfiguration.Output;
            var error = parse.InvocationConfiguration.Error;
            var failed = 0;
            foreach (var file in parse.GetValue(files)!)
            {
                try
                {
                    var model = PolicyCompiler.LoadFile(file);
                    output.WriteLine($"{file}: ok ({Summarize(model)})");
                }
                catch (ConfigValidationException ex)
                {
                    failed++;
                    foreach (var d in ex.Diagnostics)
                    {
                        error.WriteLine(d.ToString());
                    }
                    error.WriteLine($"{file}: {ex.Diagnostics.Count} error{(ex.Diagnostics.Count == 1 ? "" : "s")}");
                }
            }
            return failed == 0 ? 0 : 1;
        });
        return command;
    }

    internal static string Summarize(PolicyModel model)
    {
        var config = model.Config;
        var parts = new List<string>
        {
            $"default {(config.Default == PolicyDefault.Allow ? "allow" : "deny")}",
            $"mode {(config.Mode == PolicyMode.Shadow ? "shadow" : "enforce")}",
            $"{config.Tools.Count} tool rule{(config.Tools.Count == 1 ? "" : "s")}",
        };
        if (config.Hide.Count > 0)
        {
            parts.Add($"{config.Hide.Count} hidden");
        }
        if (model.Counters.Count > 0)
        {
            parts.Add($"{model.Counters.Count} counter{(model.Counters.Count == 1 ? "" : "s")}");
        }
        return string.Join(", ", parts);
    }
}
