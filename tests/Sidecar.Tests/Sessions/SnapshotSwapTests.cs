using Sidecar.Protocol;
using Sidecar.Sessions;
using Sidecar.Tests.TestSupport;
using static Sidecar.Tests.TestSupport.EngineHarness;

namespace Sidecar.Tests.Sessions;

/// <summary>
/// <see cref="SessionEngine.Apply"/> while requests are running: a request keeps the snapshot it started under (its
/// <c>tools/list</c> is filtered by that policy); what starts later uses the new one, in the same session.
/// </summary>
public sealed class SnapshotSwapTests
{
    private const string HidesBeta = """{ "version": "1", "default": "allow", "hide": ["beta"] }""";
    private const string HidesAlpha = """{ "version": "1", "default": "allow", "hide": ["alpha"] }""";
    private const string Tools = """{"tools":[{"name":"alpha","inputSchema":{"type":"object"}},{"name":"beta","inputSchema":{"type":"object"}},{"name":"gamma","inputSchema":{"type":"object"}}],"nextCursor":"c2"}""";

    private static string[] Names(System.Text.Json.JsonElement answer)
        => [.. answer.GetProperty("result").GetProperty("tools").EnumerateArray().Select(t => t.GetProperty("name").GetString()!)];

    [Fact]
    public async Task A_tools_list_in_flight_across_Apply_is_filtered_by_the_policy_it_started_under()
    {
        await using var h = Create(HidesBeta);
        h.Upstream.Respond = m => m.Method == "tools/list" && m.IdToken == "2" ? null
            : m.Method == "tools/list" ? ScriptedUpstream.Result(m, Tools) : h.Upstream.DefaultAnswer(m);
        var session = await h.OpenInitializedAsync();
        var inFlight = await h.StartAsync(session, Request(2, "tools/list"));
        var held = await h.Upstream.WaitForAsync(m => m.Method == "tools/list", "the tools/list");

        h.Engine.Apply(h.WithPolicy(HidesAlpha));
        Assert.Equal(2, h.Engine.Current.Version);

        h.Upstream.Latest.Say(ScriptedUpstream.Result(held, Tools));
        var old = await AnswerAsync(inFlight);
        Assert.Equal(2, old.GetProperty("id").GetInt32());
        Assert.Equal(["alpha", "gamma"], Names(old));
        Assert.Equal("c2", old.GetProperty("result").GetProperty("nextCursor").GetString()); // the rest kept as sent

        var fresh = await h.RequestAsync(session, Request(3, "tools/list"));
        Assert.Equal(["beta", "gamma"], Names(fresh));
        Assert.False(session.IsDisposed);
    }

    [Fact]
    public async Task A_decision_after_Apply_uses_the_new_policy_in_the_same_session()
    {
        await using var h = Create(HidesBeta);
        var session = await h.OpenInitializedAsync();
        Assert.True((await h.RequestAsync(session, Call(2, "alpha"))).TryGetProperty("result", out _));
        var beta = await h.RequestAsync(session, Call(3, "beta"));
        Assert.Equal(ErrorCodes.PolicyDenied, beta.GetProperty("error").GetProperty("code").GetInt32());

        h.Engine.Apply(h.WithPolicy(HidesAlpha));

        var alpha = await h.RequestAsync(session, Call(4, "alpha"));
        Assert.Equal(ErrorCodes.PolicyDenied, alpha.GetProperty("error").GetProperty("code").GetInt32());
        Assert.Equal("Tool \"alpha\" denied by policy: the tool is hidden by policy", alpha.GetProperty("error").GetProperty("message").GetString());
        Assert.True((await h.RequestAsync(session, Call(5, "beta"))).TryGetProperty("result", out _));
        Assert.Equal(["2", "5"], h.Upstream.SentWith("tools/call").Select(m => m.IdToken));
        Assert.Single(h.Upstream.Connections); // the same upstream session throughout
    }
}
