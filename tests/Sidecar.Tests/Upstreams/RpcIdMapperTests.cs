using System.Text;
using System.Text.Json;
using Sidecar.JsonRpc;
using Sidecar.Upstreams;

namespace Sidecar.Tests.Upstreams;

/// <summary>
/// <see cref="RpcIdMapper{TLane}"/> and <see cref="RpcIdSpace{TLane}"/>: sources of requests (lanes) on one upstream,
/// each using whatever ids it likes; the upstream sees only fresh numbers, and every answer, progress notification
/// and cancellation is mapped back to (or from) the source's own tokens, byte for byte.
/// </summary>
public sealed class RpcIdMapperTests
{
    private sealed record Lane(string Name);

    private static JsonRpcScan Scan(string message)
    {
        Assert.Equal(ScanStatus.Ok, JsonRpcScanner.Scan(Encoding.UTF8.GetBytes(message), out var scan));
        return scan;
    }

    /// <summary>Maps <paramref name="request"/> and returns what the upstream gets, as text, and its id.</summary>
    private static (string Upstream, long Id) Map(RpcIdMapper<Lane> mapper, string request, long correlation = 1)
    {
        var bytes = Encoding.UTF8.GetBytes(request);
        using var mapped = mapper.MapRequest(bytes, Scan(request), correlation);
        return (Encoding.UTF8.GetString(mapped.Span), mapped.UpstreamId);
    }

    /// <summary>The upstream answers <paramref name="response"/>: where it goes, and with what bytes.</summary>
    private static (bool Routed, Lane? Lane, string Answer, long Correlation) Answer(RpcIdSpace<Lane> space, string response)
    {
        var bytes = Encoding.UTF8.GetBytes(response);
        var routed = space.TryRouteResponse(bytes, Scan(response), out var route, out var rewritten);
        return routed ? (true, route.Lane, Encoding.UTF8.GetString(rewritten), route.Correlation) : (false, null, "", 0);
    }

    private static (bool Routed, Lane? Lane, string Notification) Progress(RpcIdSpace<Lane> space, string notification)
    {
        var bytes = Encoding.UTF8.GetBytes(notification);
        var routed = space.TryRouteProgress(bytes, Scan(notification), out var route, out var rewritten);
        return routed ? (true, route.Lane, Encoding.UTF8.GetString(rewritten)) : (false, null, "");
    }

    private static (bool Mapped, string Upstream) Cancel(RpcIdMapper<Lane> mapper, string notification)
    {
        var bytes = Encoding.UTF8.GetBytes(notification);
        if (!mapper.TryMapCancellation(bytes, Scan(notification), out var mapped))
        {
            return (false, "");
        }
        using (mapped)
        {
            return (true, Encoding.UTF8.GetString(mapped.Span));
        }
    }

    /// <summary>The template with %0, %1, … replaced by the values (JSON is all braces: no interpolated strings here).</summary>
    private static string Fill(string template, params object[] values)
    {
        for (var i = values.Length - 1; i >= 0; i--)
        {
            template = template.Replace("%" + i.ToString(System.Globalization.CultureInfo.InvariantCulture),
                Convert.ToString(values[i], System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal);
        }
        return template;
    }

    private static string Id(string message) => JsonDocument.Parse(message).RootElement.GetProperty("id").GetRawText();

    [Theory]
    [InlineData("7")]
    [InlineData("-3")]
    [InlineData("1.5e3")]
    [InlineData("\"call-7\"")]
    [InlineData("\"\"")]
    [InlineData("\"a\\u0062\\\"c\"")]      // escaped: the source gets exactly these bytes back
    [InlineData("\"caf\u00e9 \\ud83d\\ude00\"")]
    public void A_request_gets_a_fresh_number_and_its_answer_gets_the_original_id_token_back_byte_for_byte(string rawId)
    {
        var space = new RpcIdSpace<Lane>();
        var lane = new Lane("a");
        var mapper = new RpcIdMapper<Lane>(space, lane);
        var request = Fill("""{"jsonrpc":"2.0","id":%0,"method":"tools/call","params":{"name":"echo","arguments":{"id":%1}}}""", rawId, rawId);

        var (upstream, id) = Map(mapper, request, correlation: 42);

        // Only the envelope's id changed; the arguments (which happen to hold the same token) are untouched.
        Assert.Equal(request.Replace($"\"id\":{rawId},\"method\"", $"\"id\":{id},\"method\"", StringComparison.Ordinal), upstream);
        Assert.Equal(id.ToString(System.Globalization.CultureInfo.InvariantCulture), Id(upstream));
        Assert.Equal(1, mapper.InFlight);

        var response = Fill("""{"jsonrpc":"2.0","id":%0,"result":{"content":[{"type":"text","text":"%1"}]}}""", id, id);
        var (routed, to, answer, correlation) = Answer(space, response);
        Assert.True(routed);
        Assert.Same(lane, to);
        Assert.Equal(42, correlation);
        Assert.Equal(Fill("""{"jsonrpc":"2.0","id":%0,"result":{"content":[{"type":"text","text":"%1"}]}}""", rawId, id), answer);
        Assert.Equal(0, mapper.InFlight);
        Assert.Equal(0, space.Count);
    }

    [Fact]
    public void An_error_response_is_routed_too_and_an_id_after_params_or_spaced_out_is_found()
    {
        var space = new RpcIdSpace<Lane>();
        var mapper = new RpcIdMapper<Lane>(space, new Lane("a"));
        var request = """{ "jsonrpc" : "2.0", "method" : "tools/list", "params" : {} , "id" :  "x" }""";

        var (upstream, id) = Map(mapper, request);
        Assert.Equal(request.Replace("\"x\"", id.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal), upstream);

        var (routed, _, answer, _) = Answer(space, Fill("""{"jsonrpc":"2.0","error":{"code":-32601,"message":"no"},"id": %0 }""", id));
        Assert.True(routed);
        Assert.Equal("""{"jsonrpc":"2.0","error":{"code":-32601,"message":"no"},"id": "x" }""", answer);
    }

    [Fact]
    public void Answers_with_ids_the_space_never_gave_out_or_already_answered_are_dropped()
    {
        var space = new RpcIdSpace<Lane>();
        var mapper = new RpcIdMapper<Lane>(space, new Lane("a"));
        var (_, id) = Map(mapper, """{"jsonrpc":"2.0","id":1,"method":"ping"}""");

        Assert.False(Answer(space, Fill("""{"jsonrpc":"2.0","id":%0,"result":{}}""", id + 100)).Routed);   // never given out
        Assert.False(Answer(space, Fill("""{"jsonrpc":"2.0","id":"%0","result":{}}""", id)).Routed);       // a string is not ours
        Assert.False(Answer(space, """{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}""").Routed);
        Assert.Equal(1, mapper.InFlight);

        Assert.True(Answer(space, Fill("""{"jsonrpc":"2.0","id":%0.0,"result":{}}""", id)).Routed); // 7.0, as JavaScript may write 7
        Assert.False(Answer(space, Fill("""{"jsonrpc":"2.0","id":%0,"result":{}}""", id)).Routed); // answered twice: the second is dropped
        Assert.Equal(0, mapper.InFlight);
    }

    [Theory]
    [InlineData("\"tok-1\"")]
    [InlineData("17")]
    [InlineData("\"t\\u006fk\"")]
    public void A_progress_token_is_mapped_to_the_requests_number_and_progress_comes_back_with_the_sources_token(string token)
    {
        var space = new RpcIdSpace<Lane>();
        var lane = new Lane("a");
        var mapper = new RpcIdMapper<Lane>(space, lane);
        var request = Fill("""{"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"_meta":{"progressToken":%0},"name":"slow","arguments":{}}}""", token);

        var (upstream, id) = Map(mapper, request);
        Assert.Equal(Fill("""{"jsonrpc":"2.0","id":%0,"method":"tools/call","params":{"_meta":{"progressToken":%1},"name":"slow","arguments":{}}}""", id, id), upstream);

        for (var step = 1; step <= 2; step++)
        {
            var (routed, to, notification) = Progress(space,
                Fill("""{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":%0,"total":2,"progressToken":%1}}""", step, id));
            Assert.True(routed);
            Assert.Same(lane, to);
            Assert.Equal(Fill("""{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":%0,"total":2,"progressToken":%1}}""", step, token), notification);
        }
        Assert.Equal(1, mapper.InFlight); // progress leaves the request in flight

        Assert.True(Answer(space, Fill("""{"jsonrpc":"2.0","id":%0,"result":{}}""", id)).Routed);
        // Progress after the answer belongs to nobody.
        Assert.False(Progress(space, Fill("""{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":3,"progressToken":%0}}""", id)).Routed);
    }

    [Fact]
    public void Progress_for_a_request_that_asked_for_none_or_a_token_not_given_out_is_dropped()
    {
        var space = new RpcIdSpace<Lane>();
        var mapper = new RpcIdMapper<Lane>(space, new Lane("a"));
        var (_, plain) = Map(mapper, """{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{}}}""");
        // A token that is not a string or a number is not a progress token: it is left alone, and nothing maps to it.
        var odd = """{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"_meta":{"progressToken":{"a":1}},"name":"x"}}""";
        var (upstream, oddId) = Map(mapper, odd);
        Assert.Contains("\"progressToken\":{\"a\":1}", upstream, StringComparison.Ordinal);

        Assert.False(Progress(space, Fill("""{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1,"progressToken":%0}}""", plain)).Routed);
        Assert.False(Progress(space, Fill("""{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1,"progressToken":%0}}""", oddId)).Routed);
        Assert.False(Progress(space, """{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1,"progressToken":"tok-1"}}""").Routed);
        Assert.False(Progress(space, """{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}""").Routed);
    }

    [Fact]
    public void Meta_found_under_an_escaped_name_is_mapped_and_a_progressToken_outside_meta_is_not()
    {
        var space = new RpcIdSpace<Lane>();
        var mapper = new RpcIdMapper<Lane>(space, new Lane("a"));
        var (escaped, id) = Map(mapper, """{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_m\u0065ta":{"progress\u0054oken":"t"},"name":"x"}}""");
        Assert.Equal(Fill("""{"jsonrpc":"2.0","id":%0,"method":"tools/call","params":{"_m\u0065ta":{"progress\u0054oken":%1},"name":"x"}}""", id, id), escaped);

        var (elsewhere, id2) = Map(mapper, """{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"x","arguments":{"_meta":{"progressToken":"t"}},"progressToken":"u"}}""");
        Assert.Equal(Fill("""{"jsonrpc":"2.0","id":%0,"method":"tools/call","params":{"name":"x","arguments":{"_meta":{"progressToken":"t"}},"progressToken":"u"}}""", id2), elsewhere);
    }

    [Theory]
    [InlineData("\"c-9\"", "\"c-9\"")]
    [InlineData("\"c-9\"", "\"c\\u002d9\"")] // the same string, spelled differently
    [InlineData("9", "9")]
    [InlineData("9", "9.0")]               // the same number
    public void A_cancellation_names_the_upstream_id_and_drops_the_route(string requestId, string cancelledId)
    {
        var space = new RpcIdSpace<Lane>();
        var mapper = new RpcIdMapper<Lane>(space, new Lane("a"));
        var (_, id) = Map(mapper, Fill("""{"jsonrpc":"2.0","id":%0,"method":"tools/call","params":{"name":"hang"}}""", requestId));
        Map(mapper, """{"jsonrpc":"2.0","id":"other","method":"tools/call","params":{"name":"hang"}}""");

        var (mapped, upstream) = Cancel(mapper, Fill("""{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":%0,"reason":"timed out"}}""", cancelledId));

        Assert.True(mapped);
        Assert.Equal(Fill("""{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":%0,"reason":"timed out"}}""", id), upstream);
        Assert.Equal(1, mapper.InFlight); // "other" is still in flight
        Assert.False(Answer(space, Fill("""{"jsonrpc":"2.0","id":%0,"result":{}}""", id)).Routed); // a late answer is dropped
        Assert.False(Cancel(mapper, Fill("""{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":%0}}""", requestId)).Mapped); // once
    }

    [Fact]
    public void A_lane_cannot_cancel_another_lanes_request_nor_one_not_in_flight()
    {
        var space = new RpcIdSpace<Lane>();
        var a = new RpcIdMapper<Lane>(space, new Lane("a"));
        var b = new RpcIdMapper<Lane>(space, new Lane("b"));
        var (_, id) = Map(a, """{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"hang"}}""");

        Assert.False(Cancel(b, """{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5}}""").Mapped);
        Assert.False(Cancel(a, """{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":6}}""").Mapped);
        Assert.False(Cancel(a, """{"jsonrpc":"2.0","method":"notifications/cancelled","params":{}}""").Mapped);
        Assert.True(Answer(space, Fill("""{"jsonrpc":"2.0","id":%0,"result":{}}""", id)).Routed);
    }

    [Fact]
    public void Two_lanes_with_the_same_ids_at_the_same_time_each_get_their_own_answers()
    {
        var space = new RpcIdSpace<Lane>();
        var a = new Lane("a");
        var b = new Lane("b");
        var mapA = new RpcIdMapper<Lane>(space, a);
        var mapB = new RpcIdMapper<Lane>(space, b);
        var (upA, idA) = Map(mapA, """{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"m":"from a"}}}""");
        var (upB, idB) = Map(mapB, """{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"m":"from b"}}}""");
        Assert.NotEqual(idA, idB);
        Assert.NotEqual(Id(upA), Id(upB));

        // Answered out of order.
        var second = Answer(space, Fill("""{"jsonrpc":"2.0","id":%0,"result":"for b"}""", idB));
        var first = Answer(space, Fill("""{"jsonrpc":"2.0","id":%0,"result":"for a"}""", idA));
        Assert.Same(b, second.Lane);
        Assert.Equal("""{"jsonrpc":"2.0","id":1,"result":"for b"}""", second.Answer);
        Assert.Same(a, first.Lane);
        Assert.Equal("""{"jsonrpc":"2.0","id":1,"result":"for a"}""", first.Answer);
    }

    [Fact]
    public async Task Many_lanes_mapping_the_same_ids_concurrently_each_get_exactly_their_own_answers()
    {
        const int Lanes = 8;
        const int PerLane = 500;
        var space = new RpcIdSpace<Lane>();
        var lanes = Enumerable.Range(0, Lanes).Select(i => new Lane("lane-" + i)).ToArray();
        var mappers = lanes.Select(l => new RpcIdMapper<Lane>(space, l)).ToArray();
        var sent = new System.Collections.Concurrent.ConcurrentBag<(long UpstreamId, int Lane, int Call)>();

        // Every lane uses ids 0..PerLane-1 (and string ids for odd calls), all at once.
        await Task.WhenAll(Enumerable.Range(0, Lanes).Select(l => Task.Run(() =>
        {
            for (var call = 0; call < PerLane; call++)
            {
                var id = call % 2 == 0 ? call.ToString(System.Globalization.CultureInfo.InvariantCulture) : $"\"c{call}\"";
                var (_, upstreamId) = Map(mappers[l], Fill("""{"jsonrpc":"2.0","id":%0,"method":"tools/call","params":{"name":"echo","arguments":{"lane":%1,"call":%2}}}""", id, l, call));
                sent.Add((upstreamId, l, call));
            }
        })));
        Assert.Equal(Lanes * PerLane, sent.Select(s => s.UpstreamId).Distinct().Count());
        Assert.All(mappers, m => Assert.Equal(PerLane, m.InFlight));

        // The upstream answers everything in a shuffled order, from several threads.
        var shuffled = sent.OrderBy(_ => Random.Shared.Next()).ToArray();
        var received = new System.Collections.Concurrent.ConcurrentBag<(Lane Lane, string Answer, int ExpectedLane, int Call)>();
        await Task.WhenAll(shuffled.Chunk(shuffled.Length / 4 + 1).Select(chunk => Task.Run(() =>
        {
            foreach (var (upstreamId, lane, call) in chunk)
            {
                var (routed, to, answer, _) = Answer(space, Fill("""{"jsonrpc":"2.0","id":%0,"result":{"lane":%1,"call":%2}}""", upstreamId, lane, call));
                Assert.True(routed);
                received.Add((to!, answer, lane, call));
            }
        })));

        Assert.Equal(Lanes * PerLane, received.Count);
        foreach (var (to, answer, expectedLane, call) in received)
        {
            Assert.Same(lanes[expectedLane], to);
            var id = call % 2 == 0 ? call.ToString(System.Globalization.CultureInfo.InvariantCulture) : $"\"c{call}\"";
            Assert.Equal(Fill("""{"jsonrpc":"2.0","id":%0,"result":{"lane":%1,"call":%2}}""", id, expectedLane, call), answer);
        }
        Assert.All(mappers, m => Assert.Equal(0, m.InFlight));
        Assert.Equal(0, space.Count);
    }

    [Fact]
    public void Clearing_a_lane_drops_its_routes_only_and_its_late_answers_are_dropped()
    {
        var space = new RpcIdSpace<Lane>();
        var a = new RpcIdMapper<Lane>(space, new Lane("a"));
        var b = new RpcIdMapper<Lane>(space, new Lane("b"));
        var (_, idA) = Map(a, """{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"slow"}}""");
        Map(a, """{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"slow"}}""");
        var (_, idB) = Map(b, """{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"slow"}}""");

        Assert.Equal(2, a.Clear());

        Assert.Equal(0, a.InFlight);
        Assert.Equal(1, b.InFlight);
        Assert.False(Answer(space, Fill("""{"jsonrpc":"2.0","id":%0,"result":{}}""", idA)).Routed);
        Assert.True(Answer(space, Fill("""{"jsonrpc":"2.0","id":%0,"result":{}}""", idB)).Routed);
    }

    [Fact]
    public void A_request_that_could_not_be_sent_is_forgotten_by_its_own_mapper_only()
    {
        var space = new RpcIdSpace<Lane>();
        var a = new RpcIdMapper<Lane>(space, new Lane("a"));
        var b = new RpcIdMapper<Lane>(space, new Lane("b"));
        var (_, id) = Map(a, """{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}""");

        Assert.False(b.Forget(id));
        Assert.True(a.Forget(id));
        Assert.False(a.Forget(id));
        Assert.Equal(0, a.InFlight);
        Assert.False(Answer(space, Fill("""{"jsonrpc":"2.0","id":%0,"result":{}}""", id)).Routed);
    }

    [Fact]
    public void Clearing_the_space_hands_every_route_over_once()
    {
        var space = new RpcIdSpace<Lane>();
        var a = new RpcIdMapper<Lane>(space, new Lane("a"));
        Map(a, """{"jsonrpc":"2.0","id":1,"method":"ping"}""");
        Map(a, """{"jsonrpc":"2.0","id":2,"method":"ping"}""");
        var dropped = new List<string>();

        space.Clear(route => dropped.Add(Encoding.UTF8.GetString(route.RawId)));
        space.Clear(route => dropped.Add("again"));

        Assert.Equal(["1", "2"], dropped.Order());
        Assert.Equal(0, a.InFlight);
    }
}
