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
            Description = "Policy files, or config files (a file with \"mcpServers\" is a config: it and every policy it names are checked)",
            Arity = ArgumentArity.OneOrMore,
        };
        var command = new Command("validate", "Check policy and config files and report every error with its path and line");
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
                    if (IsConfigFile(file))
                    {
                        var config = SidecarConfigReader.LoadFile(file);
                        output.WriteLine($"{file}: ok (config: {config.Servers.Count} server{(config.Servers.Count == 1 ? "" : "s")}, listen {config.Listen})");
                        // Every policy the config names is checked, whatever the ones before it held.
                        var policyErrors = 0;
                        var brokenPolicies = 0;
                        foreach (var server in config.Servers)
                        {
                            if (server.PolicyPath is null)
                            {
                                error.WriteLine($"warning: {file}: server \"{server.Name}\" has no policy (neither its own \"policy\" nor a top-level one): every call to it will be denied");
                                continue;
                            }
                            try
                            {
                                var policy = PolicyCompiler.LoadFile(server.PolicyPath, server.Name);
                                output.WriteLine($"  {server.Name}: {server.PolicyPath}: ok ({Summarize(policy)})");
                            }
                            catch (ConfigValidationException ex)
                            {
                                brokenPolicies++;
                                policyErrors += ex.Diagnostics.Count;
                                foreach (var d in ex.Diagnostics)
                                {
                                    error.WriteLine(d.ToString());
                                }
                            }
                        }
                        if (brokenPolicies > 0)
                        {
                            failed++;
                            error.WriteLine($"{file}: {policyErrors} error{(policyErrors == 1 ? "" : "s")} in {brokenPolicies} polic{(brokenPolicies == 1 ? "y" : "ies")}");
                        }
                        continue;
                    }
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

    /// <summary>A config file is a JSON object with an <c>mcpServers</c> member; anything else is read as a policy.</summary>
    private static bool IsConfigFile(string file)
    {
        try
        {
            var root = ConfigJsonParser.Parse(File.ReadAllBytes(file), new DiagnosticBag(file));
            return root is ConfigObject obj && obj["mcpServers"] is not null;
        }
        catch (IOException)
        {
            return false;
        }
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
