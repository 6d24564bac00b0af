using System.CommandLine;
using System.Text;
using Sidecar.Audit;
using Sidecar.Configuration;

namespace Sidecar.Cli;

/// <summary>
/// <c>sidecar audit verify [PATH...]</c>: checks that a trail is whole: every event's hash, every link to the event
/// before, consecutive sequence numbers across rotated files. Exit 0 when intact, 1 with the first break of each file.
/// Runs that ended without <c>audit_stop</c> are warnings; <c>--strict</c> also exits 1 on them and on recorded losses
/// (<c>audit_gap</c>, <c>audit_sink_failure</c>).
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
        var strict = new Option<bool>("--strict")
        {
            Description = "Also exit 1 when the trail is intact but not complete: a run ended without audit_stop (crash, kill), "
                + "the trail ends without audit_stop, or records were lost (audit_gap, audit_sink_failure)",
        };
        var verify = new Command("verify", "Check an audit trail's hash chain: find edited, removed, inserted or reordered events");
        verify.Arguments.Add(paths);
        verify.Options.Add(config);
        verify.Options.Add(keyEnv);
        verify.Options.Add(strict);
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
            foreach (var warning in result.Warnings)
            {
                output.WriteLine($"warning: {warning}");
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
            var summary = $"{result.Events} events, seq {result.FirstSequence}..{result.LastSequence}, {result.Files} file{(result.Files == 1 ? "" : "s")}, chain {result.Algorithm ?? "sha256"}";
            if (parse.GetValue(strict) && !result.Complete)
            {
                var missing = new List<string>();
                if (result.Warnings.Count > 0)
                {
                    missing.Add(Plural(result.Warnings.Count, "warning"));
                }
                if (result.Dropped > 0)
                {
                    missing.Add(Plural(result.Dropped, "dropped record"));
                }
                if (result.SinkFailures > 0)
                {
                    missing.Add(Plural(result.SinkFailures, "sink failure"));
                }
                error.WriteLine($"audit trail intact but not complete (--strict): {string.Join(", ", missing)}; {summary}");
                return 1;
            }
            output.WriteLine($"audit trail intact: {summary}"
                + (result.Dropped > 0 ? $"; the trail records {result.Dropped} dropped records" : "")
                + (result.SinkFailures > 0 ? $"; {result.SinkFailures} sink failures" : "")
                + (result.Warnings.Count > 0 ? $"; {Plural(result.Warnings.Count, "warning")}" : ""));
            return 0;
        });

        var command = new Command("audit", "Work with the audit trail");
        command.Subcommands.Add(verify);
        return command;
    }

    private static string Plural(long count, string noun) => $"{count} {noun}{(count == 1 ? "" : "s")}";

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
