using System.CommandLine;
using System.Text;
using Sidecar.Audit;
using Sidecar.Configuration;

namespace Sidecar.Cli;

/// <summary>
/// <c>sidecar audit verify [PATH...]</c>: checks that a trail is whole: every event's hash, every link to the event
/// before, consecutive sequence numbers across rotated files. Exit 0 when intact, 1 with the first break of each file.
/// </summary>
internal static class AuditCommand
{
    public static Command Create()
    {
        var paths = new Argument<string[]>("paths")
        {
            Description = "Audit files, or folders holding them (every *.jsonl inside); default: the file of --config's audit section",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var config = new Option<string?>("--config", "-c") { Description = "A sidecar.json: verify its audit file (and its HMAC key)" };
        var keyEnv = new Option<string?>("--key-env") { Description = "Name of the environment variable holding the HMAC key the trail was written with" };
        var verify = new Command("verify", "Check an audit trail's hash chain: find edited, removed, inserted or reordered events");
        verify.Arguments.Add(paths);
        verify.Options.Add(config);
        verify.Options.Add(keyEnv);
        verify.SetAction(parse =>
        {
            var output = parse.InvocationConfiguration.Output;
            var error = parse.InvocationConfiguration.Error;
            var files = new List<string>();
            byte[]? key = null;
            try
            {
                if (parse.GetValue(config) is { } configPath)
                {
                    var loaded = SidecarConfigReader.LoadFile(configPath);
                    if (loaded.Audit.HmacKey is { } hmac)
                    {
                        key = Encoding.UTF8.GetBytes(hmac);
                    }
                    if (loaded.Audit.File is { } file && parse.GetValue(paths) is not { Length: > 0 })
                    {
                        AddFolder(files, Path.GetDirectoryName(file.Path)!, Path.GetFileNameWithoutExtension(file.Path));
                    }
                }
            }
            catch (ConfigValidationException ex)
            {
                foreach (var d in ex.Diagnostics)
                {
                    error.WriteLine(d.ToString());
                }
                return 2;
            }
            if (parse.GetValue(keyEnv) is { } name)
            {
                if (Environment.GetEnvironmentVariable(name) is not { Length: > 0 } value)
                {
                    error.WriteLine($"environment variable {name} is not set");
                    return 2;
                }
                key = Encoding.UTF8.GetBytes(value);
            }
            foreach (var path in parse.GetValue(paths) ?? [])
            {
                if (Directory.Exists(path))
                {
                    AddFolder(files, path, null);
                }
                else if (File.Exists(path))
                {
                    files.Add(path);
                }
                else
                {
                    error.WriteLine($"{path}: no such file or folder");
                    return 2;
                }
            }
            if (files.Count == 0)
            {
                error.WriteLine("no audit files to verify: give files or folders, or --config");
                return 2;
            }

            var result = AuditVerifier.Verify(files, key);
            foreach (var note in result.Notes)
            {
                output.WriteLine($"note: {note}");
            }
            foreach (var problem in result.Problems)
            {
                error.WriteLine(problem);
            }
            if (!result.Intact)
            {
                error.WriteLine($"audit trail BROKEN: {result.Problems.Count} problem{(result.Problems.Count == 1 ? "" : "s")} in {result.Files} file{(result.Files == 1 ? "" : "s")}");
                return 1;
            }
            output.WriteLine($"audit trail intact: {result.Events} events, seq {result.FirstSequence}..{result.LastSequence}, {result.Files} file{(result.Files == 1 ? "" : "s")}, chain {result.Algorithm ?? "sha256"}"
                + (result.Dropped > 0 ? $"; the trail records {result.Dropped} dropped records" : "")
                + (result.SinkFailures > 0 ? $"; {result.SinkFailures} sink failures" : ""));
            return 0;
        });

        var command = new Command("audit", "Work with the audit trail");
        command.Subcommands.Add(verify);
        return command;
    }

    private static void AddFolder(List<string> files, string folder, string? stem)
    {
        if (!Directory.Exists(folder))
        {
            return;
        }
        foreach (var file in Directory.GetFiles(folder, stem is null ? "*.jsonl" : stem + "*.jsonl"))
        {
            files.Add(file);
        }
    }
}
