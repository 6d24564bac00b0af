using System.Collections.Frozen;

namespace Sidecar.Catalogue;

/// <summary>What a tool does, as far as a policy cares (PRODUCT.md "Catalogue, scan and suggested policies").</summary>
public enum ToolCategory : byte { Read, Write, Execute, Destructive, Financial, Other }

/// <summary>How much harm a call can do. Follows the category unless something raises it.</summary>
public enum ToolRisk : byte { Low, Medium, High }

/// <summary>
/// A tool's MCP annotations as the server reported them. Every hint is optional: <c>null</c> means the server did not
/// say, which is not the same as <c>false</c> (the spec's defaults — destructive and open-world when unsaid — are not
/// applied here: an unsaid hint is simply no evidence).
/// </summary>
public sealed record ToolAnnotations(bool? ReadOnlyHint = null, bool? DestructiveHint = null, bool? IdempotentHint = null, bool? OpenWorldHint = null)
{
    /// <summary>True when at least one hint was given.</summary>
    public bool Any => ReadOnlyHint is not null || DestructiveHint is not null || IdempotentHint is not null || OpenWorldHint is not null;
}

/// <summary>A tool as <c>tools/list</c> reports it, reduced to what the classifier reads.</summary>
public sealed record ToolDefinition(string Name, string? Description = null, ToolAnnotations? Annotations = null);

/// <summary>The classifier's answer.</summary>
/// <param name="Basis">Why, in a few words, e.g. <c>name verb "start"</c> or <c>readOnlyHint</c>: goes into suggested rules' descriptions.</param>
public readonly record struct ToolClassification(ToolCategory Category, ToolRisk Risk, string Basis);

/// <summary>
/// Classifies a tool into a <see cref="ToolCategory"/> and <see cref="ToolRisk"/>. Pure and deterministic.
/// </summary>
/// <remarks>
/// <para>Order of evidence:</para>
/// <list type="number">
/// <item><c>readOnlyHint: true</c> → <c>read</c> (the spec says <c>destructiveHint</c> means nothing for a read-only tool).</item>
/// <item><c>destructiveHint: true</c> → <c>destructive</c>, unless the name or description says money moves
/// (<c>financial</c> is the more specific class; both are high risk).</item>
/// <item>Otherwise the name, then the description (below). The heuristic answer is then corrected by explicit hints:
/// <c>readOnlyHint: false</c> turns <c>read</c> or <c>other</c> into <c>write</c> (the server says it changes something);
/// <c>destructiveHint: false</c> turns <c>destructive</c> into <c>write</c> (the server says its updates are additive).</item>
/// </list>
/// <para>Names are split on camelCase, snake_case, kebab-case, dots and spaces. The first token found in the verb table
/// decides (so prefixes such as <c>browser_</c>, <c>asana_</c>, <c>n8n_</c> are skipped), except that a name joining
/// two verbs with <c>and</c>/<c>then</c> (<c>modify_and_send</c>) takes the graver of the two. A few verbs are ambiguous
/// (<c>generate</c>, <c>manage</c>, <c>handle</c>, <c>process</c>, <c>make</c>, <c>perform</c>, <c>use</c>, <c>apply</c>):
/// for those the description's first unambiguous verb decides, and the verb's own default only if the description has none.
/// With no verb in the name at all, the first verb among the description's first words decides; with none there
/// either, the tool is <c>other</c>.</para>
/// <para>Money: a financial verb (<c>charge</c>, <c>pay</c>, <c>refund</c>, <c>transfer</c>…) is <c>financial</c>;
/// so is any changing verb (write, execute, destructive) whose object is a money noun (<c>invoice</c>,
/// <c>subscription</c>, <c>payment</c>…). Reading an invoice moves no money and stays <c>read</c>.</para>
/// <para>Risk: <c>read</c> low, <c>write</c> medium, <c>execute</c>/<c>destructive</c>/<c>financial</c> high,
/// <c>other</c> medium. The only thing that raises it is an explicit <c>openWorldHint: true</c> on a <c>write</c>
/// tool (a change that lands outside the server — a post, a message, a remote record) → high. <c>idempotentHint</c>
/// says whether a retry is safe, not how much harm one call does, so it changes neither category nor risk. Nothing
/// lowers a risk: annotations come from the server and a hint of <c>false</c> is never taken as proof of safety.</para>
/// </remarks>
public static class ToolClassifier
{
    private const int DescriptionWords = 12;

    private static readonly FrozenDictionary<string, ToolCategory> s_verbs = BuildVerbs();

    /// <summary>Verbs whose meaning depends on what follows; the description is asked first.</summary>
    private static readonly FrozenDictionary<string, ToolCategory> s_ambiguous = new Dictionary<string, ToolCategory>(StringComparer.Ordinal)
    {
        ["generate"] = ToolCategory.Write,
        ["manage"] = ToolCategory.Write,
        ["handle"] = ToolCategory.Write,
        ["process"] = ToolCategory.Execute,
        ["make"] = ToolCategory.Execute,
        ["perform"] = ToolCategory.Execute,
        ["use"] = ToolCategory.Execute,
        ["apply"] = ToolCategory.Write,
    }.ToFrozenDictionary(StringComparer.Ordinal);

    private static readonly FrozenSet<string> s_moneyNouns = new[]
    {
        "invoice", "invoices", "subscription", "subscriptions", "payment", "payments", "refund", "refunds", "charge", "charges",
        "payout", "payouts", "transfer", "transfers", "checkout", "billing", "wallet", "balance",
    }.ToFrozenSet(StringComparer.Ordinal);

    /// <summary>Classifies one tool.</summary>
    public static ToolClassification Classify(ToolDefinition tool)
    {
        ArgumentNullException.ThrowIfNull(tool);
        var hints = tool.Annotations;
        var (heuristic, basis) = FromText(tool.Name, tool.Description);

        ToolCategory category;
        if (hints?.ReadOnlyHint == true)
        {
            category = ToolCategory.Read;
            basis = "readOnlyHint";
        }
        else if (hints?.DestructiveHint == true)
        {
            category = heuristic == ToolCategory.Financial ? ToolCategory.Financial : ToolCategory.Destructive;
            basis = heuristic == ToolCategory.Financial ? basis + ", destructiveHint" : "destructiveHint";
        }
        else
        {
            category = heuristic;
            if (hints?.ReadOnlyHint == false && heuristic is ToolCategory.Read or ToolCategory.Other)
            {
                category = ToolCategory.Write;
                basis += ", readOnlyHint false";
            }
            else if (hints?.DestructiveHint == false && heuristic == ToolCategory.Destructive)
            {
                category = ToolCategory.Write;
                basis += ", destructiveHint false";
            }
        }

        var risk = DefaultRisk(category);
        if (category == ToolCategory.Write && hints?.OpenWorldHint == true)
        {
            risk = ToolRisk.High;
            basis += ", openWorldHint";
        }
        return new ToolClassification(category, risk, basis);
    }

    /// <summary>The risk a category carries when nothing raises it.</summary>
    public static ToolRisk DefaultRisk(ToolCategory category) => category switch
    {
        ToolCategory.Read => ToolRisk.Low,
        ToolCategory.Write => ToolRisk.Medium,
        ToolCategory.Execute or ToolCategory.Destructive or ToolCategory.Financial => ToolRisk.High,
        _ => ToolRisk.Medium,
    };

    /// <summary>The category's name as written in catalogues and policies: <c>read</c>, <c>write</c>, ….</summary>
    public static string Name(ToolCategory category) => category switch
    {
        ToolCategory.Read => "read",
        ToolCategory.Write => "write",
        ToolCategory.Execute => "execute",
        ToolCategory.Destructive => "destructive",
        ToolCategory.Financial => "financial",
        _ => "other",
    };

    /// <summary>The risk's name: <c>low</c>, <c>medium</c>, <c>high</c>.</summary>
    public static string Name(ToolRisk risk) => risk switch
    {
        ToolRisk.Low => "low",
        ToolRisk.Medium => "medium",
        _ => "high",
    };

    /// <summary>Parses a category name (as <see cref="Name(ToolCategory)"/> writes it).</summary>
    public static bool TryParseCategory(string text, out ToolCategory category)
    {
        foreach (var c in (ReadOnlySpan<ToolCategory>)[ToolCategory.Read, ToolCategory.Write, ToolCategory.Execute, ToolCategory.Destructive, ToolCategory.Financial, ToolCategory.Other])
        {
            if (string.Equals(Name(c), text, StringComparison.OrdinalIgnoreCase))
            {
                category = c;
                return true;
            }
        }
        category = ToolCategory.Other;
        return false;
    }

    /// <summary>
    /// Splits a tool name into lower-case words: <c>connectServer</c> → connect, server; <c>runSEOAudit</c> → run, seo,
    /// audit; <c>export_openapi_spec</c> and <c>drop-collection</c> on their separators.
    /// </summary>
    public static IReadOnlyList<string> SplitName(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        var words = new List<string>();
        var start = -1;
        for (var i = 0; i <= name.Length; i++)
        {
            var c = i < name.Length ? name[i] : ' ';
            if (!char.IsLetterOrDigit(c))
            {
                Flush(name, ref start, i, words);
                continue;
            }
            if (start >= 0 && char.IsUpper(c))
            {
                var prev = name[i - 1];
                // aB → a|B; ABc → A|Bc (the last capital of an acronym starts the next word).
                var lowerBefore = char.IsLower(prev) || char.IsDigit(prev);
                var acronymEnds = char.IsUpper(prev) && i + 1 < name.Length && char.IsLower(name[i + 1]);
                if (lowerBefore || acronymEnds)
                {
                    Flush(name, ref start, i, words);
                }
            }
            if (start < 0)
            {
                start = i;
            }
        }
        return words;

        static void Flush(string name, ref int start, int end, List<string> words)
        {
            if (start >= 0 && end > start)
            {
                words.Add(name[start..end].ToLowerInvariant());
            }
            start = -1;
        }
    }

    private static (ToolCategory Category, string Basis) FromText(string name, string? description)
    {
        var nameWords = SplitName(name);
        var descriptionWords = description is null ? [] : FirstWords(description);

        ToolCategory? category = null;
        string basis = "no known verb";
        var verbIndex = -1;
        for (var i = 0; i < nameWords.Count; i++)
        {
            if (Lookup(nameWords[i], s_verbs) is { } found)
            {
                category = found.Category;
                basis = $"name verb \"{found.Verb}\"";
                verbIndex = i;
                break;
            }
            if (Lookup(nameWords[i], s_ambiguous) is { } vague)
            {
                if (FirstVerb(descriptionWords) is { } fromDescription)
                {
                    category = fromDescription.Category;
                    basis = $"name verb \"{vague.Verb}\", description verb \"{fromDescription.Verb}\"";
                }
                else
                {
                    category = vague.Category;
                    basis = $"name verb \"{vague.Verb}\"";
                }
                verbIndex = i;
                break;
            }
        }
        if (category is not null && verbIndex >= 0)
        {
            // "modify_and_send", "search_then_delete": a name that joins two verbs does both; the graver one counts.
            for (var i = verbIndex + 1; i < nameWords.Count - 1; i++)
            {
                if (nameWords[i] is "and" or "then" && Lookup(nameWords[i + 1], s_verbs) is { } second
                    && Severity(second.Category) > Severity(category.Value))
                {
                    category = second.Category;
                    basis += $" and \"{second.Verb}\"";
                }
            }
        }
        if (category is null && FirstVerb(descriptionWords) is { } described)
        {
            category = described.Category;
            basis = $"description verb \"{described.Verb}\"";
        }
        if (category is not { } result)
        {
            return (ToolCategory.Other, basis);
        }

        if (result is ToolCategory.Write or ToolCategory.Execute or ToolCategory.Destructive)
        {
            // A change whose object is money: the noun usually follows the verb in the name.
            for (var i = verbIndex + 1; i < nameWords.Count; i++)
            {
                if (s_moneyNouns.Contains(nameWords[i]))
                {
                    return (ToolCategory.Financial, basis + $", money noun \"{nameWords[i]}\"");
                }
            }
        }
        return (result, basis);
    }

    private static int Severity(ToolCategory category) => category switch
    {
        ToolCategory.Read => 0,
        ToolCategory.Other => 1,
        ToolCategory.Write => 2,
        ToolCategory.Execute => 3,
        ToolCategory.Destructive => 4,
        _ => 5,
    };

    private static (ToolCategory Category, string Verb)? FirstVerb(IReadOnlyList<string> words)
    {
        foreach (var word in words)
        {
            if (Lookup(word, s_verbs) is { } found)
            {
                return found;
            }
        }
        return null;
    }

    /// <summary>Looks a word up as written, then with common inflections removed (starts, lists, running, created, copies).</summary>
    private static (ToolCategory Category, string Verb)? Lookup(string word, FrozenDictionary<string, ToolCategory> table)
    {
        if (table.TryGetValue(word, out var category))
        {
            return (category, word);
        }
        foreach (var stem in Stems(word))
        {
            if (stem.Length > 1 && table.TryGetValue(stem, out category))
            {
                return (category, stem);
            }
        }
        return null;
    }

    private static IEnumerable<string> Stems(string word)
    {
        if (word.EndsWith("ies", StringComparison.Ordinal)) { yield return word[..^3] + "y"; }
        if (word.EndsWith("es", StringComparison.Ordinal)) { yield return word[..^2]; }
        if (word.EndsWith('s')) { yield return word[..^1]; }
        if (word.EndsWith("ing", StringComparison.Ordinal))
        {
            yield return word[..^3];
            yield return word[..^3] + "e";
            if (word.Length > 5 && word[^4] == word[^5]) { yield return word[..^4]; } // running → run
        }
        if (word.EndsWith("ed", StringComparison.Ordinal))
        {
            yield return word[..^2];
            yield return word[..^1];
        }
    }

    private static List<string> FirstWords(string description)
    {
        var words = new List<string>(DescriptionWords);
        var start = -1;
        for (var i = 0; i <= description.Length && words.Count < DescriptionWords; i++)
        {
            var c = i < description.Length ? description[i] : ' ';
            if (char.IsLetter(c))
            {
                if (start < 0) { start = i; }
                continue;
            }
            if (start >= 0)
            {
                words.Add(description[start..i].ToLowerInvariant());
                start = -1;
            }
            if (c is '.' or '\n' && words.Count > 0)
            {
                break; // the first sentence only
            }
        }
        return words;
    }

    private static FrozenDictionary<string, ToolCategory> BuildVerbs()
    {
        var table = new Dictionary<string, ToolCategory>(StringComparer.Ordinal);
        Add(ToolCategory.Read,
            "get", "list", "search", "find", "query", "inspect", "export", "read", "show", "describe", "fetch", "retrieve",
            "lookup", "view", "count", "check", "detect", "analyze", "analyse", "explain", "extract", "summarize", "browse",
            "poll", "peek", "take", "screenshot", "snapshot", "decompile", "diff", "validate", "compare", "preview",
            "estimate", "lint", "audit", "watch", "whoami", "status", "stats", "info", "resolve", "recommend", "suggest",
            "introspect", "learn", "infer", "cluster", "guess", "wait", "verify", "await", "look");
        Add(ToolCategory.Write,
            "set", "add", "create", "update", "connect", "register", "write", "save", "edit", "modify", "insert", "upsert",
            "put", "patch", "rename", "move", "copy", "duplicate", "clone", "import", "upload", "load", "fill", "type",
            "click", "drag", "hover", "press", "select", "assign", "label", "tag", "comment", "reply", "post", "push",
            "commit", "merge", "fork", "star", "unstar", "mark", "dismiss", "mute", "unmute", "enable", "disable", "toggle",
            "configure", "init", "initialize", "store", "remember", "append", "attach", "schedule", "resize", "emulate",
            "install", "disconnect", "archive", "approve", "accept", "transition", "change", "replace", "rebase",
            "checkout", "download", "inject", "rewrite", "record", "mark", "new", "define", "upsert", "restore", "link",
            "unlink", "confirm", "provision", "prepare", "complete", "finalize", "reject", "block", "unblock", "pin");
        Add(ToolCategory.Execute,
            "start", "run", "exec", "execute", "send", "replay", "fuzz", "launch", "invoke", "call", "trigger", "deploy",
            "evaluate", "eval", "navigate", "open", "resume", "restart", "build", "test", "spawn", "ping", "request",
            "crawl", "scrape", "pull", "cancel", "submit", "forward", "publish", "dispatch", "attack", "scan", "render",
            "convert", "transcribe", "speak", "synthesize", "intercept", "proxy", "serve", "email", "notify", "message");
        Add(ToolCategory.Destructive,
            "delete", "drop", "clear", "remove", "kill", "stop", "destroy", "wipe", "prune", "purge", "erase", "truncate",
            "reset", "revoke", "terminate", "uninstall", "close", "flush", "discard", "evict", "unregister", "shutdown");
        Add(ToolCategory.Financial,
            "charge", "pay", "refund", "transfer", "payout", "purchase", "buy", "bill", "invoice", "subscribe", "withdraw",
            "deposit", "capture", "spend", "donate", "tip");
        return table.ToFrozenDictionary(StringComparer.Ordinal);

        void Add(ToolCategory category, params string[] verbs)
        {
            foreach (var verb in verbs)
            {
                table.TryAdd(verb, category);
            }
        }
    }
}
