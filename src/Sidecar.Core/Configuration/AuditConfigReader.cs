using Sidecar.Policy;

namespace Sidecar.Configuration;

/// <summary>
/// Reads the <c>audit</c> section of <c>sidecar.json</c>. Without the section, the trail goes to
/// <see cref="AuditConfig.DefaultFilePath"/> in the working directory. A section that names sinks (<c>file</c>,
/// <c>stdout</c>, <c>http</c>) uses exactly those; one that names none keeps the default file.
/// </summary>
internal static class AuditConfigReader
{
    private const string Fields = "enabled, file, stdout, http, bufferEvents, batchEvents, flushInterval, onFull, durability, maxArgumentBytes, maxStringLength, redactKeys, hmacKey";

    public static AuditConfig Read(ConfigNode node, string baseDirectory, Func<string, string?> environment, DiagnosticBag diagnostics)
    {
        var audit = AuditConfig.Default;
        if (node is not ConfigObject obj)
        {
            diagnostics.Add(node, $"\"audit\" must be an object, not {node.KindName}");
            return audit;
        }
        var members = new PolicyConfigReader.MemberReader(obj, diagnostics);
        if (members.Take("enabled") is { } enabledNode && ReadBool(enabledNode, diagnostics) is false)
        {
            members.ReportUnknown(Fields);
            return AuditConfig.Disabled;
        }

        var fileNode = members.Take("file");
        var stdoutNode = members.Take("stdout");
        var httpNode = members.Take("http");
        AuditFileConfig? file = audit.File;
        if (fileNode is not null || stdoutNode is not null || httpNode is not null)
        {
            file = fileNode is null ? null : ReadFile(fileNode, baseDirectory, diagnostics);
        }
        var stdout = stdoutNode is not null && ReadBool(stdoutNode, diagnostics) is true;
        var http = httpNode is null ? null : ReadHttp(httpNode, baseDirectory, environment, diagnostics);

        audit = audit with
        {
            File = file,
            Stdout = stdout,
            Http = http,
            BufferEvents = ReadInt(members.Take("bufferEvents"), audit.BufferEvents, 64, 1 << 22, "bufferEvents", diagnostics),
            BatchEvents = ReadInt(members.Take("batchEvents"), audit.BatchEvents, 1, 100_000, "batchEvents", diagnostics),
            MaxArgumentBytes = ReadInt(members.Take("maxArgumentBytes"), audit.MaxArgumentBytes, 0, 1 << 20, "maxArgumentBytes", diagnostics),
            MaxStringLength = ReadInt(members.Take("maxStringLength"), audit.MaxStringLength, 16, 1 << 20, "maxStringLength", diagnostics),
        };
        if (members.Take("flushInterval") is { } flushNode)
        {
            if (PolicyConfigReader.TryReadDuration(flushNode, out var flush) && flush >= TimeSpan.FromMilliseconds(1) && flush <= TimeSpan.FromMinutes(1))
            {
                audit = audit with { FlushInterval = flush };
            }
            else
            {
                diagnostics.Add(flushNode, $"invalid flushInterval {PolicyConfigReader.Describe(flushNode)}; expected a duration from \"1ms\" to \"1m\"");
            }
        }
        audit = audit with
        {
            OnFull = ReadChoice(members.Take("onFull"), "onFull", audit.OnFull, "shed", AuditOverflow.Shed, "drop", AuditOverflow.Drop,
                "\"shed\" (refuse the call) or \"drop\" (forward it unrecorded)", diagnostics),
            Durability = ReadChoice(members.Take("durability"), "durability", audit.Durability, "batched", AuditDurability.Batched,
                "before_answer", AuditDurability.BeforeAnswer, "\"batched\" or \"before_answer\"", diagnostics),
        };
        if (members.Take("redactKeys") is { } redactNode)
        {
            var keys = SidecarConfigReader.ReadStringList(redactNode, diagnostics);
            keys.RemoveAll(string.IsNullOrEmpty);
            audit = audit with { RedactKeys = keys };
        }
        if (members.Take("hmacKey") is { } keyNode && PolicyConfigReader.ReadString(keyNode, diagnostics) is { } keyText)
        {
            if (SidecarConfigReader.Expand(keyText, keyNode, environment, diagnostics) is { } expanded)
            {
                if (expanded.Length < 16)
                {
                    diagnostics.Add(keyNode, "\"hmacKey\" must be at least 16 characters (use \"${NAME}\" to take it from the environment)");
                }
                audit = audit with { HmacKey = expanded };
            }
        }
        members.ReportUnknown(Fields);
        return audit;
    }

    private static AuditFileConfig? ReadFile(ConfigNode node, string baseDirectory, DiagnosticBag diagnostics)
    {
        switch (node)
        {
            case ConfigScalar { Kind: ConfigNodeKind.False }:
                return null;
            case ConfigScalar { IsString: true, Text: { Length: > 0 } path }:
                return new AuditFileConfig(SidecarConfigReader.ResolvePath(baseDirectory, path), AuditFileConfig.DefaultMaxBytes, AuditFileConfig.DefaultMaxFiles);
            case ConfigObject obj:
                var members = new PolicyConfigReader.MemberReader(obj, diagnostics);
                string? filePath = null;
                if (members.Take("path") is { } pathNode && PolicyConfigReader.ReadString(pathNode, diagnostics) is { Length: > 0 } p)
                {
                    filePath = SidecarConfigReader.ResolvePath(baseDirectory, p);
                }
                else
                {
                    diagnostics.Add(obj, "\"file\" needs a \"path\"");
                }
                var maxBytes = ReadLong(members.Take("maxBytes"), AuditFileConfig.DefaultMaxBytes, 4096, long.MaxValue, "maxBytes", diagnostics);
                var maxFiles = ReadInt(members.Take("maxFiles"), AuditFileConfig.DefaultMaxFiles, 0, 100_000, "maxFiles", diagnostics);
                members.ReportUnknown("path, maxBytes, maxFiles");
                return filePath is null ? null : new AuditFileConfig(filePath, maxBytes, maxFiles);
            default:
                diagnostics.Add(node, $"\"file\" must be a path, an object with \"path\", or false, not {node.KindName}");
                return null;
        }
    }

    private static AuditHttpConfig? ReadHttp(ConfigNode node, string baseDirectory, Func<string, string?> environment, DiagnosticBag diagnostics)
    {
        if (node is not ConfigObject obj)
        {
            diagnostics.Add(node, $"\"http\" must be an object with \"url\", not {node.KindName}");
            return null;
        }
        var members = new PolicyConfigReader.MemberReader(obj, diagnostics);
        var (url, headers, timeout) = SidecarConfigReader.ReadHttpTarget(members, obj, "http", TimeSpan.FromSeconds(10), TimeSpan.FromMinutes(5), "5m",
            environment, diagnostics);
        var spool = SidecarConfigReader.ResolvePath(baseDirectory, "sidecar-audit-spool");
        if (members.Take("spool") is { } spoolNode && PolicyConfigReader.ReadString(spoolNode, diagnostics) is { Length: > 0 } s)
        {
            spool = SidecarConfigReader.ResolvePath(baseDirectory, s);
        }
        var maxSpool = ReadLong(members.Take("maxSpoolBytes"), AuditHttpConfig.DefaultMaxSpoolBytes, 1024, long.MaxValue, "maxSpoolBytes", diagnostics);
        members.ReportUnknown("url, headers, spool, maxSpoolBytes, timeout");
        return url is null ? null : new AuditHttpConfig(url, headers, spool, maxSpool, timeout);
    }

    /// <summary>One of two names, each standing for a value; <paramref name="fallback"/> when absent or invalid (reported).</summary>
    private static T ReadChoice<T>(ConfigNode? node, string field, T fallback, string firstName, T first, string secondName, T second,
        string expected, DiagnosticBag diagnostics)
    {
        if (node is null)
        {
            return fallback;
        }
        var text = PolicyConfigReader.ReadString(node, diagnostics);
        if (text == firstName)
        {
            return first;
        }
        if (text == secondName)
        {
            return second;
        }
        if (text is not null)
        {
            diagnostics.Add(node, $"invalid {field} \"{text}\"; expected {expected}");
        }
        return fallback;
    }

    private static bool? ReadBool(ConfigNode node, DiagnosticBag diagnostics)
    {
        if (node is ConfigScalar { IsBoolean: true } scalar)
        {
            return scalar.Kind == ConfigNodeKind.True;
        }
        diagnostics.Add(node, $"expected true or false, not {PolicyConfigReader.Describe(node)}");
        return null;
    }

    private static int ReadInt(ConfigNode? node, int fallback, int min, int max, string name, DiagnosticBag diagnostics)
        => (int)ReadLong(node, fallback, min, max, name, diagnostics);

    private static long ReadLong(ConfigNode? node, long fallback, long min, long max, string name, DiagnosticBag diagnostics)
    {
        if (node is null)
        {
            return fallback;
        }
        if (node is ConfigScalar { IsNumber: true } n && long.TryParse(n.Text, out var value) && value >= min && value <= max)
        {
            return value;
        }
        diagnostics.Add(node, $"\"{name}\" must be a whole number from {min} to {max}");
        return fallback;
    }
}
