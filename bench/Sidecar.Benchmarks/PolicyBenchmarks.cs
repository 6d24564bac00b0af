using System.Text;
using BenchmarkDotNet.Attributes;
using Sidecar.Decisions;
using Sidecar.JsonRpc;
using Sidecar.Policy;
using Sidecar.RateLimiting;

namespace Sidecar.Benchmarks;

/// <summary>
/// <see cref="DecisionEngine.Decide(PolicyModel, in CallContext, ReadOnlySpan{char}, ReadOnlySpan{byte}, bool, out Decision)"/>
/// against the 50-tool <see cref="Policies.Realistic"/> policy: rule lookup, conditions over the raw arguments and
/// token-bucket acquires. The <c>all_tools</c> limit applies to every call that gets as far as limits.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(BenchConfig))]
public class PolicyBenchmarks
{
    private static readonly CallContext Context = new("agent-1", "grant-1", "session-1");

    private DecisionEngine _engine = null!;
    private PolicyModel _policy = null!;
    private byte[] _getIssueArgs = null!;
    private byte[] _sendRequestArgs = null!;
    private byte[] _formatDiskArgs = null!;
    private byte[] _setOptionArgs = null!;
    private byte[] _fetchUrlArgs = null!;

    [GlobalSetup]
    public void Setup()
    {
        _policy = Policies.Realistic();
        _engine = new DecisionEngine(new RateLimitStore());
        _getIssueArgs = Encoding.UTF8.GetBytes("""{"id":"ISSUE-4821","include":"comments"}""");
        // The typical message's own arguments object, byte for byte.
        JsonRpcScanner.Scan(Payloads.TypicalCall, out var scan);
        _sendRequestArgs = scan.Arguments.SliceOf(Payloads.TypicalCall).ToArray();
        _formatDiskArgs = Encoding.UTF8.GetBytes("""{"device":"/dev/sda","force":true}""");
        _setOptionArgs = Encoding.UTF8.GetBytes("""{"key":"listen_port","value":"8081"}""");
        _fetchUrlArgs = Encoding.UTF8.GetBytes("""{"url":"http://docs.example.com/guide/intro","max_bytes":65536}""");

        Expect("get_issue", _getIssueArgs, DecisionOutcome.Allow, "tools.get_issue");
        Expect(Payloads.TypicalTool, _sendRequestArgs, DecisionOutcome.Allow, "tools.send_request");
        Expect("format_disk", _formatDiskArgs, DecisionOutcome.Deny, "default");
        Expect("set_option", _setOptionArgs, DecisionOutcome.Deny, "tools.set_option.deny_if[0]");
        Expect("fetch_url", _fetchUrlArgs, DecisionOutcome.InvalidArguments, "tools.fetch_url.require[0]");
    }

    /// <summary>Checks that a benchmarked call takes the path its name claims.</summary>
    private void Expect(string tool, byte[] arguments, DecisionOutcome outcome, string rule)
    {
        _engine.Decide(_policy, Context, tool, arguments, approved: false, out var decision);
        if (decision.Outcome != outcome || decision.Rule != rule)
        {
            throw new InvalidOperationException($"{tool}: expected {outcome} by {rule}, got {decision.Outcome} by {decision.Rule}");
        }
    }

    [Benchmark(Baseline = true, Description = "Allowed, no conditions (all_tools limit)")]
    public DecisionOutcome AllowedNoConditions()
    {
        _engine.Decide(_policy, Context, "get_issue", _getIssueArgs, approved: false, out var decision);
        return decision.Outcome;
    }

    [Benchmark(Description = "Allowed, 2 conditions + 2 limits")]
    public DecisionOutcome AllowedTwoConditionsTwoLimits()
    {
        _engine.Decide(_policy, Context, Payloads.TypicalTool, _sendRequestArgs, approved: false, out var decision);
        return decision.Outcome;
    }

    [Benchmark(Description = "Denied: unknown tool (default deny)")]
    public DecisionOutcome DeniedByDefault()
    {
        _engine.Decide(_policy, Context, "format_disk", _formatDiskArgs, approved: false, out var decision);
        return decision.Outcome;
    }

    [Benchmark(Description = "Denied: deny_if 'in' matches")]
    public DecisionOutcome DenyIfInMatches()
    {
        _engine.Decide(_policy, Context, "set_option", _setOptionArgs, approved: false, out var decision);
        return decision.Outcome;
    }

    [Benchmark(Description = "Refused: require regex fails")]
    public DecisionOutcome RequireRegexFails()
    {
        _engine.Decide(_policy, Context, "fetch_url", _fetchUrlArgs, approved: false, out var decision);
        return decision.Outcome;
    }
}
