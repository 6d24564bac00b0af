using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Sidecar.Catalogue;
using Sidecar.Tests.TestSupport;
using Xunit.Abstractions;
using YamlDotNet.RepresentationModel;

namespace Sidecar.Tests.Catalogue;

public sealed partial class ToolClassifierTests(ITestOutputHelper output)
{
    private static readonly string s_fixtures = Repo.PathOf("tests", "Sidecar.Tests", "Catalogue", "fixtures");

    [Theory]
    [InlineData("start_proxy", "execute", "high")]
    [InlineData("connectServer", "write", "medium")]
    [InlineData("export_openapi_spec", "read", "low")]
    [InlineData("start_web_server", "execute", "high")]
    public void Seed_classes_come_out(string name, string category, string risk)
    {
        var c = ToolClassifier.Classify(new ToolDefinition(name));
        Assert.Equal(category, ToolClassifier.Name(c.Category));
        Assert.Equal(risk, ToolClassifier.Name(c.Risk));
    }

    [Theory]
    [InlineData("connectServer", "connect,server")]
    [InlineData("runSEOAudit", "run,seo,audit")]
    [InlineData("export_openapi_spec", "export,openapi,spec")]
    [InlineData("drop-collection", "drop,collection")]
    [InlineData("Run-Funnels-Query", "run,funnels,query")]
    [InlineData("get_flow_by_id", "get,flow,by,id")]
    public void Names_split_on_case_and_separators(string name, string words)
        => Assert.Equal(words.Split(','), ToolClassifier.SplitName(name));

    [Fact]
    public void Annotations_decide_where_present()
    {
        // A name that says "delete" but a server that says read-only: the hint wins.
        Assert.Equal(ToolCategory.Read, Classify("delete_preview", readOnly: true).Category);
        Assert.Equal(ToolCategory.Destructive, Classify("sync_items", destructive: true).Category);
        // Money is more specific than destructive.
        Assert.Equal(ToolCategory.Financial, Classify("create_refund", destructive: true).Category);
        // The server says it changes something: a read-looking name becomes a write.
        Assert.Equal(ToolCategory.Write, Classify("get_or_create_user", readOnly: false).Category);
        // The server says its updates are additive: not destructive.
        Assert.Equal(ToolCategory.Write, Classify("remove_label", destructive: false).Category);
        // idempotentHint changes nothing.
        Assert.Equal(Classify("set_option"), Classify("set_option", idempotent: true) with { Basis = Classify("set_option").Basis });
    }

    [Fact]
    public void Open_world_raises_a_write_to_high_and_nothing_lowers_a_risk()
    {
        Assert.Equal(ToolRisk.High, Classify("post_message", readOnly: false, openWorld: true).Risk);
        Assert.Equal(ToolRisk.Medium, Classify("post_message", openWorld: false).Risk);
        Assert.Equal(ToolRisk.Low, Classify("web_search", readOnly: true, openWorld: true).Risk);
        Assert.Equal(ToolRisk.High, Classify("run_query", openWorld: false).Risk);
    }

    [Fact]
    public void Description_decides_when_the_name_has_no_verb_or_an_ambiguous_one()
    {
        Assert.Equal(ToolCategory.Read, ToolClassifier.Classify(new ToolDefinition("flow_details", "Shows one captured flow.")).Category);
        Assert.Equal(ToolCategory.Read, ToolClassifier.Classify(new ToolDefinition("traffic_summary", "Lists recent flows")).Category);
        Assert.Equal(ToolCategory.Execute, ToolClassifier.Classify(new ToolDefinition("generate_video", "Runs a rendering job on the GPU farm")).Category);
        Assert.Equal(ToolCategory.Other, ToolClassifier.Classify(new ToolDefinition("aks", "Azure Kubernetes Service")).Category);
        Assert.Equal(ToolCategory.Financial, ToolClassifier.Classify(new ToolDefinition("cancel_subscription")).Category);
        Assert.Equal(ToolCategory.Read, ToolClassifier.Classify(new ToolDefinition("list_invoices")).Category);
    }

    [Fact]
    public void Agrees_with_a_reviewer_on_the_servers_our_users_run()
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(s_fixtures, "servers.json")));
        var pairs = new List<(string Tool, ToolCategory Expected, ToolCategory Actual)>();
        foreach (var server in doc.RootElement.GetProperty("servers").EnumerateArray())
        {
            foreach (var tool in server.GetProperty("tools").EnumerateArray())
            {
                var name = tool.GetProperty("name").GetString()!;
                var description = tool.GetProperty("description").GetString();
                Assert.True(ToolClassifier.TryParseCategory(tool.GetProperty("expected").GetString()!, out var expected));
                pairs.Add((name, expected, ToolClassifier.Classify(new ToolDefinition(name, description)).Category));
            }
        }
        Assert.Equal(25 + 20 + 5 + 5, pairs.Count);
        var agreement = Report("servers.json (reviewer's categories)", pairs);
        Assert.True(agreement >= 0.90, $"agreement {agreement:P1}");
    }

    /// <summary>
    /// Intercept's scaffolds group tools under comment headings <c>#  ── Read Tools ──</c> (also Write, Execute,
    /// Destructive, Financial, Other), each tool preceded by <c>#  name: description</c>. The five named headings map
    /// one to one onto our categories. "Other Tools" is where Intercept puts what it did not classify (git_commit,
    /// browser_click, stop_container…): it is no claim about the tool, so those tools are printed in the table but
    /// left out of the agreement figure.
    /// </summary>
    [Fact]
    public void Agrees_with_the_intercept_scaffolds_headings()
    {
        var tools = ReadInterceptScaffolds();
        Assert.True(tools.Count > 900, $"only {tools.Count} tools parsed");
        var pairs = tools.Select(t => (t.Tool, t.Heading, ToolClassifier.Classify(new ToolDefinition(t.Tool, t.Description)).Category)).ToList();
        Report("intercept-policies (all headings, Other included)", pairs);
        var agreement = Report("intercept-policies (the five named headings)", pairs.Where(p => p.Heading != ToolCategory.Other).ToList());
        Assert.True(agreement >= 0.90, $"agreement {agreement:P1}");
    }

    private static List<(string File, string Tool, string? Description, ToolCategory Heading)> ReadInterceptScaffolds()
    {
        var result = new List<(string, string, string?, ToolCategory)>();
        var files = Directory.GetFiles(Path.Combine(s_fixtures, "intercept-policies"), "*.yaml").Order(StringComparer.Ordinal).ToArray();
        Assert.Equal(53, files.Length);
        foreach (var file in files)
        {
            ToolCategory? heading = null;
            var descriptions = new Dictionary<string, string>(StringComparer.Ordinal);
            var names = new List<string>();
            var inTools = false;
            foreach (var line in File.ReadLines(file))
            {
                if (line == "tools:") { inTools = true; continue; }
                if (!inTools) { continue; }
                if (HeadingLine().Match(line) is { Success: true } h)
                {
                    Assert.True(ToolClassifier.TryParseCategory(h.Groups[1].Value, out var c), $"{file}: heading {h.Groups[1].Value}");
                    heading = c;
                }
                else if (DescriptionLine().Match(line) is { Success: true } d)
                {
                    descriptions[d.Groups[1].Value] = d.Groups[2].Value.Trim();
                }
                else if (ToolLine().Match(line) is { Success: true } t)
                {
                    var name = t.Groups[1].Value.Trim('"', '\'');
                    Assert.True(heading is not null, $"{file}: {name} has no heading above it");
                    names.Add(name);
                    result.Add((Path.GetFileName(file), name, descriptions.GetValueOrDefault(name), heading!.Value));
                }
            }

            // The line reading must see exactly the tools a YAML parser sees.
            var yaml = new YamlStream();
            using (var reader = new StreamReader(file)) { yaml.Load(reader); }
            var root = (YamlMappingNode)yaml.Documents[0].RootNode;
            var parsed = ((YamlMappingNode)root.Children[new YamlScalarNode("tools")]).Children.Keys
                .Select(k => ((YamlScalarNode)k).Value!).Where(k => k != "*").ToArray();
            Assert.Equal(parsed, names);
        }
        return result;
    }

    private double Report(string title, IReadOnlyList<(string Tool, ToolCategory Expected, ToolCategory Actual)> pairs)
    {
        var categories = Enum.GetValues<ToolCategory>();
        var sb = new StringBuilder();
        var agree = pairs.Count(p => p.Expected == p.Actual);
        var agreement = pairs.Count == 0 ? 1 : (double)agree / pairs.Count;
        sb.AppendLine(CultureInfo.InvariantCulture, $"{title}: {agree}/{pairs.Count} agree ({agreement:P1}); rows = expected, columns = classifier");
        sb.Append("expected \\ got".PadRight(16));
        foreach (var c in categories) { sb.Append(ToolClassifier.Name(c).PadLeft(12)); }
        sb.AppendLine();
        foreach (var row in categories)
        {
            sb.Append(ToolClassifier.Name(row).PadRight(16));
            foreach (var col in categories)
            {
                sb.Append(pairs.Count(p => p.Expected == row && p.Actual == col).ToString(CultureInfo.InvariantCulture).PadLeft(12));
            }
            sb.AppendLine();
        }
        var misses = pairs.Where(p => p.Expected != p.Actual).ToList();
        if (misses.Count > 0)
        {
            sb.AppendLine("disagreements: " + string.Join(", ", misses.Take(60).Select(m => $"{m.Tool} ({ToolClassifier.Name(m.Expected)}→{ToolClassifier.Name(m.Actual)})"))
                + (misses.Count > 60 ? $", … {misses.Count - 60} more" : ""));
        }
        output.WriteLine(sb.ToString());
        return agreement;
    }

    private static ToolClassification Classify(string name, bool? readOnly = null, bool? destructive = null, bool? idempotent = null, bool? openWorld = null)
        => ToolClassifier.Classify(new ToolDefinition(name, null, new ToolAnnotations(readOnly, destructive, idempotent, openWorld)));

    [GeneratedRegex(@"^\s*#\s*──\s*(\w+) Tools\b")]
    private static partial Regex HeadingLine();

    [GeneratedRegex(@"^\s{4}#\s+([^\s:]+):\s?(.*)$")]
    private static partial Regex DescriptionLine();

    [GeneratedRegex(@"^\s{4}([^\s#][^\s]*):\s*$")]
    private static partial Regex ToolLine();
}
