using System.Buffers;
using System.IO.Pipelines;
using System.Text;
using System.Text.Json;
using Sidecar.Configuration;
using Sidecar.Protocol;
using Sidecar.Sessions;
using Sidecar.Tests.TestSupport;
using static Sidecar.Tests.TestSupport.EngineHarness;

namespace Sidecar.Tests.Sessions;

/// <summary>
/// The stdio agent transport of <c>sidecar wrap</c> over in-memory pipes: one JSON-RPC message per line each way,
/// bad lines answered without stopping, and the answers still owed written after stdin ends.
/// </summary>
public sealed class StdioAgentTests
{
    /// <summary>A <see cref="StdioAgent"/> running over two pipes: the test writes stdin and reads stdout.</summary>
    private sealed class Agent : IAsyncDisposable
    {
        private readonly Pipe _stdin = new();
        private readonly Pipe _stdout = new();
        private bool _ended;

        public Agent(GatewayLimits? limits = null)
        {
            Harness = Create(limits: limits);
            Harness.Upstream.Respond = m => m.Method == "slow" ? null : Harness.Upstream.DefaultAnswer(m);
            Session = Harness.Open(SessionTransport.Stdio);
            Run = new StdioAgent(Harness.Engine, Session).RunAsync(_stdin.Reader, _stdout.Writer, CancellationToken.None);
        }

        public EngineHarness Harness { get; }

        public McpSession Session { get; }

        public Task Run { get; }

        public async Task WriteAsync(string text)
        {
            await _stdin.Writer.WriteAsync(Encoding.UTF8.GetBytes(text));
        }

        public void EndInput()
        {
            if (!_ended)
            {
                _ended = true;
                _stdin.Writer.Complete();
            }
        }

        /// <summary>The next line on stdout, without its newline (at most 10 s).</summary>
        public async Task<string> ReadLineAsync()
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            while (true)
            {
                var result = await _stdout.Reader.ReadAsync(timeout.Token);
                var buffer = result.Buffer;
                if (buffer.PositionOf((byte)'\n') is { } end)
                {
                    var line = Encoding.UTF8.GetString(buffer.Slice(0, end));
                    _stdout.Reader.AdvanceTo(buffer.GetPosition(1, end));
                    return line;
                }
                Assert.False(result.IsCompleted, "stdout ended without a full line");
                _stdout.Reader.AdvanceTo(buffer.Start, buffer.End);
            }
        }

        public async Task<JsonElement> ReadMessageAsync() => JsonDocument.Parse(await ReadLineAsync()).RootElement.Clone();

        public async ValueTask DisposeAsync()
        {
            EndInput();
            await Run.WaitAsync(TimeSpan.FromSeconds(10));
            await Harness.DisposeAsync();
        }
    }

    [Fact]
    public async Task Each_message_is_one_line_even_a_pretty_printed_upstream_answer()
    {
        await using var agent = new Agent();
        agent.Harness.Upstream.Respond = m => m.Method == "ping" && m.IdToken == "1"
            ? "{\n  \"jsonrpc\": \"2.0\",\r\n  \"id\": 1,\n  \"result\": {\n    \"text\": \"two\\nlines\"\n  }\n}"
            : agent.Harness.Upstream.DefaultAnswer(m);
        await agent.WriteAsync(Request(1, "ping") + "\n" + Request(2, "ping") + "\n");
        var first = await agent.ReadLineAsync();
        Assert.DoesNotContain('\r', first);
        var answer = JsonDocument.Parse(first).RootElement;
        Assert.Equal(1, answer.GetProperty("id").GetInt32());
        Assert.Equal("two\nlines", answer.GetProperty("result").GetProperty("text").GetString()); // an escaped newline stays one
        Assert.Equal(2, (await agent.ReadMessageAsync()).GetProperty("id").GetInt32());
    }

    [Fact]
    public async Task A_tools_call_notification_gets_no_answer_and_never_runs()
    {
        await using var agent = new Agent();
        await agent.WriteAsync(Notification("tools/call", """{"name":"echo","arguments":{}}""") + "\n" + Request(5, "ping") + "\n");
        // The next line is the ping's answer: the notification got none (JSON-RPC), and reached nothing.
        Assert.Equal(5, (await agent.ReadMessageAsync()).GetProperty("id").GetInt32());
        Assert.Empty(agent.Harness.Upstream.SentWith("tools/call"));
    }

    [Fact]
    public async Task CRLF_lines_are_read_and_blank_lines_ignored()
    {
        await using var agent = new Agent();
        await agent.WriteAsync("\n   \n\t\r\n\r\n" + Request(3, "ping") + "\r\n" + Request(4, "ping") + "\n");
        Assert.Equal(3, (await agent.ReadMessageAsync()).GetProperty("id").GetInt32());
        Assert.Equal(4, (await agent.ReadMessageAsync()).GetProperty("id").GetInt32());
        Assert.Equal(["3", "4"], agent.Harness.Upstream.SentWith("ping").Select(m => m.IdToken));
    }

    [Fact]
    public async Task A_garbage_line_gets_32700_with_id_null_and_reading_goes_on()
    {
        await using var agent = new Agent();
        await agent.WriteAsync("this is not json\n" + Request(5, "ping") + "\n");
        Assert.Equal("""{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error: Message is not valid JSON."}}""", await agent.ReadLineAsync());
        Assert.Equal(5, (await agent.ReadMessageAsync()).GetProperty("id").GetInt32());
    }

    [Fact]
    public async Task A_refused_line_with_an_id_is_answered_with_that_id()
    {
        await using var agent = new Agent();
        await agent.WriteAsync("""{"jsonrpc":"1.0","id":"v1","method":"ping"}""" + "\n");
        var answer = await agent.ReadMessageAsync();
        Assert.Equal("\"v1\"", answer.GetProperty("id").GetRawText());
        Assert.Equal(ErrorCodes.InvalidRequest, answer.GetProperty("error").GetProperty("code").GetInt32());
    }

    [Fact]
    public async Task A_line_growing_past_maxMessageBytes_gets_one_error_and_the_next_line_still_works()
    {
        await using var agent = new Agent(GatewayLimits.Default with { MaxMessageBytes = 1024 });
        // More than the limit and no newline yet: refused before the line is complete.
        await agent.WriteAsync("""{"jsonrpc":"2.0","id":6,"method":"ping","params":{"pad":" """ + new string('a', 1500));
        Assert.Equal("""{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request: messages are limited to 1024 bytes (limits.maxMessageBytes)"}}""",
            await agent.ReadLineAsync());
        // The rest of that line is skipped without another error.
        await agent.WriteAsync(new string('b', 1500));
        await agent.WriteAsync(new string('c', 10) + "\"}}\n" + Request(7, "ping") + "\n");
        var next = await agent.ReadMessageAsync();
        Assert.Equal(7, next.GetProperty("id").GetInt32());
        Assert.True(next.TryGetProperty("result", out _));
        Assert.Equal(["7"], agent.Harness.Upstream.SentWith("ping").Select(m => m.IdToken));
    }

    [Fact]
    public async Task A_whole_line_over_maxMessageBytes_gets_one_error_and_the_next_line_still_works()
    {
        await using var agent = new Agent(GatewayLimits.Default with { MaxMessageBytes = 1024 });
        await agent.WriteAsync(Call(8, "echo", $$"""{"pad":"{{new string('a', 2000)}}"}""") + "\n" + Request(9, "ping") + "\n");
        var error = await agent.ReadMessageAsync();
        Assert.Equal(JsonValueKind.Null, error.GetProperty("id").ValueKind);
        Assert.Equal(ErrorCodes.InvalidRequest, error.GetProperty("error").GetProperty("code").GetInt32());
        Assert.Equal(9, (await agent.ReadMessageAsync()).GetProperty("id").GetInt32());
        Assert.Empty(agent.Harness.Upstream.SentWith("tools/call"));
    }

    [Fact]
    public async Task Server_notifications_and_requests_go_to_stdout_as_lines()
    {
        await using var agent = new Agent();
        await agent.WriteAsync(Request(1, "ping") + "\n");
        Assert.Equal(1, (await agent.ReadMessageAsync()).GetProperty("id").GetInt32());
        agent.Harness.Upstream.Latest.Say("""{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}""");
        agent.Harness.Upstream.Latest.Say("""{"jsonrpc":"2.0","id":"s1","method":"roots/list"}""");
        Assert.Equal("""{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}""", await agent.ReadLineAsync());
        Assert.Equal("""{"jsonrpc":"2.0","id":"s1","method":"roots/list"}""", await agent.ReadLineAsync());
        // The agent's answer to the server's request goes upstream as it is.
        await agent.WriteAsync("""{"jsonrpc":"2.0","id":"s1","result":{"roots":[]}}""" + "\n");
        await agent.Harness.Upstream.WaitForAsync(m => m.Json == """{"jsonrpc":"2.0","id":"s1","result":{"roots":[]}}""", "the agent's answer");
    }

    [Fact]
    public async Task After_stdin_ends_the_answers_still_owed_are_written_before_RunAsync_returns()
    {
        await using var agent = new Agent();
        await agent.WriteAsync(Request(10, "slow") + "\n" + Request(11, "ping"));  // the last line has no newline
        var slow = await agent.Harness.Upstream.WaitForAsync(m => m.Method == "slow", "the held request");
        agent.EndInput();
        Assert.Equal(11, (await agent.ReadMessageAsync()).GetProperty("id").GetInt32());
        Assert.False(agent.Run.IsCompleted); // still owed an answer

        agent.Harness.Upstream.Latest.Say(ScriptedUpstream.Result(slow, """{"late":true}"""));
        await agent.Run.WaitAsync(TimeSpan.FromSeconds(10));
        var answer = await agent.ReadMessageAsync();
        Assert.Equal(10, answer.GetProperty("id").GetInt32());
        Assert.True(answer.GetProperty("result").GetProperty("late").GetBoolean());
        Assert.True(agent.Session.IsDisposed);
    }
}
