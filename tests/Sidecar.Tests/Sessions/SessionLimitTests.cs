using Sidecar.Configuration;
using Sidecar.Protocol;
using Sidecar.Sessions;
using Sidecar.Tests.TestSupport;
using static Sidecar.Tests.TestSupport.EngineHarness;

namespace Sidecar.Tests.Sessions;

/// <summary>Opening and closing sessions: the gateway's and each server's caps, and servers removed by a reload.</summary>
public sealed class SessionLimitTests
{
    [Fact]
    public async Task TryOpen_refuses_past_limits_maxSessions_and_opens_again_once_one_closes()
    {
        await using var h = Create(limits: GatewayLimits.Default with { MaxSessions = 2 });
        var snapshot = h.Engine.Current;
        var server = snapshot.Find("srv")!;
        Assert.Equal(SessionOpen.Opened, h.Engine.TryOpen(snapshot, server, SessionTransport.StreamableHttp, out var first));
        Assert.Equal(SessionOpen.Opened, h.Engine.TryOpen(snapshot, server, SessionTransport.LegacySse, out var second));
        Assert.Equal(SessionOpen.GatewayFull, h.Engine.TryOpen(snapshot, server, SessionTransport.StreamableHttp, out var third));
        Assert.Null(third);
        Assert.Equal(2, h.Engine.SessionCount);
        Assert.Equal(2, h.Engine.SessionCountOf("srv"));

        await first!.DisposeAsync();
        Assert.Equal(1, h.Engine.SessionCount);
        Assert.Equal(1, h.Engine.SessionCountOf("srv"));
        Assert.Null(h.Engine.Find("srv", first.Id, SessionTransport.StreamableHttp));
        await first.DisposeAsync(); // twice: counted once
        Assert.Equal(1, h.Engine.SessionCount);

        Assert.Equal(SessionOpen.Opened, h.Engine.TryOpen(snapshot, server, SessionTransport.StreamableHttp, out var again));
        Assert.Same(again, h.Engine.Find("srv", again!.Id, SessionTransport.StreamableHttp));
        Assert.Null(h.Engine.Find("srv", again.Id, SessionTransport.LegacySse)); // found only over its own transport
        await second!.DisposeAsync();
        await again.DisposeAsync();
        Assert.Equal(0, h.Engine.SessionCount);
    }

    [Fact]
    public async Task TryOpen_refuses_past_the_servers_MaxSessions_without_counting_the_refused_one()
    {
        await using var h = Create(maxSessionsPerServer: 1);
        var snapshot = h.Engine.Current;
        var server = snapshot.Find("srv")!;
        Assert.Equal(1, server.MaxSessions);
        Assert.Equal(SessionOpen.Opened, h.Engine.TryOpen(snapshot, server, SessionTransport.Stdio, out var first));
        Assert.Equal(SessionOpen.ServerFull, h.Engine.TryOpen(snapshot, server, SessionTransport.Stdio, out var refused));
        Assert.Null(refused);
        Assert.Equal(1, h.Engine.SessionCount);
        Assert.Equal(1, h.Engine.SessionCountOf("srv"));

        await first!.DisposeAsync();
        Assert.Equal(0, h.Engine.SessionCount);
        Assert.Equal(0, h.Engine.SessionCountOf("srv"));
        Assert.Equal(SessionOpen.Opened, h.Engine.TryOpen(snapshot, server, SessionTransport.Stdio, out var next));
        await next!.DisposeAsync();
    }

    [Fact]
    public async Task Apply_with_a_snapshot_without_the_server_closes_its_sessions_and_fails_what_they_had_in_flight()
    {
        await using var h = Create();
        h.Upstream.Respond = m => m.Method == "slow" ? null : h.Upstream.DefaultAnswer(m);
        var session = await h.OpenInitializedAsync();
        var idle = h.Open();
        var held = await h.StartAsync(session, Request(2, "slow"));
        await h.Upstream.WaitForAsync(m => m.Method == "slow", "the held request");
        Assert.Equal(2, h.Engine.SessionCount);

        h.Engine.Apply(h.WithoutServers());

        var answer = await AnswerAsync(held);
        Assert.Equal(2, answer.GetProperty("id").GetInt32());
        Assert.Equal(ErrorCodes.UpstreamUnavailable, answer.GetProperty("error").GetProperty("code").GetInt32());
        Assert.Equal(SessionMessages.SessionClosed, answer.GetProperty("error").GetProperty("message").GetString());
        await WaitAsync(() => session.IsDisposed && idle.IsDisposed && h.Upstream.Latest.Disposed);
        Assert.Equal(0, h.Engine.SessionCount);
        Assert.Equal(0, h.Engine.SessionCountOf("srv"));
        Assert.Null(h.Engine.Find("srv", session.Id, SessionTransport.StreamableHttp));

        // A transport that found the session just before the swap: the new snapshot has no such server.
        var late = await h.RequestAsync(session, Request(3, "ping"));
        Assert.Equal(ErrorCodes.UpstreamUnavailable, late.GetProperty("error").GetProperty("code").GetInt32());
        Assert.Equal(SessionMessages.ServerRemoved("srv"), late.GetProperty("error").GetProperty("message").GetString());
    }

    [Fact]
    public async Task Apply_keeps_the_sessions_of_servers_the_new_snapshot_still_has()
    {
        await using var h = Create();
        var session = await h.OpenInitializedAsync();
        h.Engine.Apply(h.WithPolicy(AllowAll));
        Assert.False(session.IsDisposed);
        Assert.Equal(1, h.Engine.SessionCount);
        Assert.True((await h.RequestAsync(session, Request(2, "ping"))).TryGetProperty("result", out _));
        Assert.False(h.Upstream.Latest.Disposed);
    }

    private static async Task WaitAsync(Func<bool> condition)
    {
        var deadline = Environment.TickCount64 + 10_000;
        while (!condition())
        {
            Assert.True(Environment.TickCount64 < deadline, "timed out");
            await Task.Delay(5);
        }
    }
}
