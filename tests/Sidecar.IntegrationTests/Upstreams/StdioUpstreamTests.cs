using System.Buffers;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Sidecar.Configuration;
using Sidecar.IntegrationTests.TestSupport;
using Sidecar.Upstreams;

namespace Sidecar.IntegrationTests.Upstreams;

public sealed class StdioUpstreamTests : UpstreamConversationTests
{
    protected override ServerConfig Server { get; } = EverythingServer.StartStdioConfig();

    protected override bool ResponsesCarryCorrelation => false;

    private static ServerConfig Command(string command, string[] args, IReadOnlyDictionary<string, string>? env = null, string? cwd = null) =>
        new("fake", new SourceLocation(1, 1), UpstreamTransport.Stdio, command, args,
            env ?? new Dictionary<string, string>(), cwd, null, new Dictionary<string, string>(), null);

    private static ServerConfig Shell(string script) => Command("sh", ["-c", script]);

    private async Task<IUpstreamConnection> ConnectAsync(ServerConfig server, GatewayLimits? limits = null)
    {
        var connector = UpstreamConnectors.Create(server, limits ?? TestLimits, Loggers);
        Assert.Equal("stdio", connector.Transport);
        return await connector.ConnectAsync(CancellationToken.None);
    }

    private static async Task<UpstreamEvent> NextEventAsync(IUpstreamConnection connection, TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(10));
        return await connection.Events.ReadAsync(cts.Token);
    }

    private static ValueTask SendAsync(IUpstreamConnection connection, string text, long correlation = 1) =>
        connection.SendAsync(new ReadOnlySequence<byte>(Encoding.UTF8.GetBytes(text)), correlation, CancellationToken.None);

    [Fact]
    public async Task A_pretty_printed_message_reaches_the_real_server_as_one_message()
    {
        await using var session = await OpenAsync();
        var client = session.Client;
        await client.InitializeAsync();

        // LF and CRLF line breaks and indentation: sent raw, the server would see five broken lines.
        var response = await client.RequestRawAsync("42",
            "{\n  \"jsonrpc\": \"2.0\",\r\n  \"id\": 42,\n  \"method\": \"tools/call\",\r\n  \"params\": {\n    \"name\": \"echo\",\n    \"arguments\": { \"message\": \"multi\\nline\" }\n  }\n}\n");
        Assert.Contains("multi\nline", response.ToolText()); // the escaped \n inside the string is data, and kept
    }

    [Fact]
    public async Task Embedded_newlines_are_sent_as_spaces_so_the_server_reads_exactly_one_line()
    {
        // cat echoes each line it reads: one line in, one message out.
        await using var connection = await ConnectAsync(Command("cat", []));
        const string pretty = "{\n  \"a\": 1,\r\n  \"b\": [1,\n 2],\r  \"c\": \"x\"\n}";
        await SendAsync(connection, pretty);

        var only = await NextEventAsync(connection);
        Assert.Equal(UpstreamEventKind.Message, only.Kind);
        Assert.Equal(pretty.Replace('\n', ' ').Replace('\r', ' '), Encoding.UTF8.GetString(only.Payload.Span));
        using (var doc = JsonDocument.Parse(only.Payload))
        {
            Assert.Equal(2, doc.RootElement.GetProperty("b")[1].GetInt32());
        }

        await SendAsync(connection, """{"next":true}""");
        var next = await NextEventAsync(connection);
        Assert.Equal("""{"next":true}""", Encoding.UTF8.GetString(next.Payload.Span)); // nothing came in between
    }

    [Fact]
    public async Task Concurrent_senders_never_interleave()
    {
        await using var connection = await ConnectAsync(Command("cat", []));
        const int senders = 8, perSender = 40;
        var filler = new string('x', 8 * 1024);
        var sending = Enumerable.Range(0, senders).Select(s => Task.Run(async () =>
        {
            for (var i = 0; i < perSender; i++)
            {
                await SendAsync(connection, $$"""{"s":{{s}},"i":{{i}},"pad":"{{filler}}"}""", (s * 1000) + i + 1);
            }
        })).ToArray();

        var seen = new HashSet<(int, int)>();
        var lastBySender = new int[senders];
        Array.Fill(lastBySender, -1);
        for (var n = 0; n < senders * perSender; n++)
        {
            var e = await NextEventAsync(connection);
            using var doc = JsonDocument.Parse(e.Payload); // a torn message would not parse
            var s = doc.RootElement.GetProperty("s").GetInt32();
            var i = doc.RootElement.GetProperty("i").GetInt32();
            Assert.Equal(filler, doc.RootElement.GetProperty("pad").GetString());
            Assert.True(seen.Add((s, i)));
            Assert.True(i > lastBySender[s], "one sender's messages arrive in its order");
            lastBySender[s] = i;
        }
        await Task.WhenAll(sending);
    }

    [Fact]
    public async Task A_missing_command_is_a_clear_UpstreamException()
    {
        var connector = UpstreamConnectors.Create(Command("sidecar-no-such-command-4711", []), TestLimits, Loggers);
        var ex = await Assert.ThrowsAsync<UpstreamException>(async () => await connector.ConnectAsync(CancellationToken.None));
        Assert.Contains("cannot start upstream 'fake'", ex.Message);
        Assert.Contains("sidecar-no-such-command-4711", ex.Message);
    }

    [Fact]
    public async Task A_missing_working_directory_is_a_clear_UpstreamException()
    {
        var connector = UpstreamConnectors.Create(Command("cat", [], cwd: "/nonexistent/sidecar-test"), TestLimits, Loggers);
        var ex = await Assert.ThrowsAsync<UpstreamException>(async () => await connector.ConnectAsync(CancellationToken.None));
        Assert.Contains("/nonexistent/sidecar-test", ex.Message);
    }

    [Fact]
    public async Task A_killed_server_faults_Completion_and_later_sends_throw()
    {
        await using var session = await OpenAsync();
        await session.Client.InitializeAsync();
        var connection = (StdioUpstreamConnection)session.Connection;

        using (var process = Process.GetProcessById(connection.ProcessId))
        {
            process.Kill();
        }

        var ex = await Assert.ThrowsAsync<UpstreamException>(() => connection.Completion.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Matches("^upstream process exited with code [0-9-]+$", ex.Message);
        var sendEx = await Assert.ThrowsAsync<UpstreamException>(async () => await SendAsync(connection, """{"jsonrpc":"2.0","method":"ping","id":9}"""));
        Assert.Equal(ex.Message, sendEx.Message);
    }

    [Fact]
    public async Task Exit_code_is_reported_and_output_written_before_exit_is_delivered()
    {
        await using var connection = await ConnectAsync(Shell("""echo '{"last":"words"}'; exit 3"""));
        var e = await NextEventAsync(connection);
        Assert.Equal("""{"last":"words"}""", Encoding.UTF8.GetString(e.Payload.Span));
        var ex = await Assert.ThrowsAsync<UpstreamException>(() => connection.Completion.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal("upstream process exited with code 3", ex.Message);
        Assert.False(await connection.Events.WaitToReadAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(5)), "events complete after the last one");
    }

    [Fact]
    public async Task Dispose_ends_the_real_server_process()
    {
        var session = await OpenAsync();
        await session.Client.InitializeAsync();
        var connection = (StdioUpstreamConnection)session.Connection;
        var pid = connection.ProcessId;
        Assert.True(IsRunning(pid));

        // Dispose returns once the process is gone (closing stdin, then killing it after the grace period): the bound
        // only stops a hung dispose from hanging the run.
        await session.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(60));
        Assert.False(IsRunning(pid), $"server process {pid} is still running");
        Assert.True(connection.Completion.IsCompletedSuccessfully, "a disposed connection completes without error");
    }

    [Fact]
    public async Task Dispose_kills_a_process_tree_that_ignores_stdin_closing()
    {
        // The shell waits for its child forever; closing stdin does nothing to either.
        var connection = await ConnectAsync(Shell("""sleep 300 & echo "{\"child\":$!}"; wait"""));
        var child = ChildPid(await NextEventAsync(connection));
        var root = ((StdioUpstreamConnection)connection).ProcessId;
        Assert.True(IsRunning(child) && IsRunning(root));

        await connection.DisposeAsync();
        Assert.False(IsRunning(root), "the root process survived");
        Assert.False(IsRunning(child), "the child process survived");
        Assert.Contains(Loggers.Entries, e => e.EventId.Id == 2005); // "did not exit ... killing its process tree"
    }

    [Fact]
    public async Task Dispose_kills_children_left_behind_by_a_root_that_exits()
    {
        // The shell exits when its stdin closes, orphaning its child: Kill(entireProcessTree) could no longer find it.
        var connection = await ConnectAsync(Shell("""sleep 300 & echo "{\"child\":$!}"; cat > /dev/null"""));
        var child = ChildPid(await NextEventAsync(connection));
        Assert.True(IsRunning(child));

        await connection.DisposeAsync();
        Assert.False(IsRunning(child), "the orphaned child survived");
    }

    [Fact]
    public async Task Stderr_goes_to_the_logger_with_the_server_name_and_never_to_events()
    {
        await using var connection = await ConnectAsync(Shell("""echo "secret diagnostics" >&2; echo '{"ok":1}'; cat > /dev/null"""));
        var e = await NextEventAsync(connection);
        Assert.Equal("""{"ok":1}""", Encoding.UTF8.GetString(e.Payload.Span));

        var deadline = Stopwatch.StartNew();
        while (!Loggers.Entries.Any(l => l.EventId.Id == 2001) && deadline.Elapsed < TimeSpan.FromSeconds(5))
        {
            await Task.Delay(20);
        }
        var line = Assert.Single(Loggers.Entries, l => l.EventId.Id == 2001);
        Assert.Equal(LogLevel.Information, line.Level);
        Assert.Equal("fake: secret diagnostics", line.Message);
        Assert.False(connection.Events.TryRead(out _));
    }

    [Fact]
    public async Task Real_server_stderr_is_logged()
    {
        await using var session = await OpenAsync();
        await session.Client.InitializeAsync();
        // stderr is its own pipe, read by its own loop: nothing orders its lines with the answers on stdout.
        static bool Logged(TestLoggerFactory.Entry entry) => entry.EventId.Id == 2001 && entry.Message.StartsWith("everything: ", StringComparison.Ordinal)
            && entry.Message.Contains("STDIO", StringComparison.Ordinal);
        var deadline = Stopwatch.StartNew();
        while (!Loggers.Entries.Any(Logged) && deadline.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(20);
        }
        Assert.Contains(Loggers.Entries, Logged);
    }

    [Fact]
    public async Task Lines_over_the_size_limit_are_dropped_with_a_warning_and_reading_goes_on()
    {
        var limits = TestLimits with { MaxMessageBytes = 1024 };
        // 200 kB in one line: far more than the limit, so it has to be skipped while it streams in.
        await using var connection = await ConnectAsync(
            Shell("""head -c 200000 /dev/zero | tr '\0' 'a'; echo; echo '{"after":"big"}'; cat > /dev/null"""), limits);
        var e = await NextEventAsync(connection);
        Assert.Equal("""{"after":"big"}""", Encoding.UTF8.GetString(e.Payload.Span));
        Assert.Contains(Loggers.Entries, l => l.EventId.Id == 2002 && l.Level == LogLevel.Warning);
    }

    [Fact]
    public async Task Env_is_laid_over_the_inherited_environment_and_cwd_is_used()
    {
        var cwd = Path.GetTempPath().TrimEnd('/');
        var server = Command("sh", ["-c", """printf '{"var":"%s","path":"%s","cwd":"%s"}\n' "$SIDECAR_TEST_VAR" "$PATH" "$PWD"; cat > /dev/null"""],
            new Dictionary<string, string> { ["SIDECAR_TEST_VAR"] = "from-config" }, cwd);
        await using var connection = await ConnectAsync(server);
        using var doc = JsonDocument.Parse((await NextEventAsync(connection)).Payload);
        Assert.Equal("from-config", doc.RootElement.GetProperty("var").GetString());
        Assert.Equal(Environment.GetEnvironmentVariable("PATH"), doc.RootElement.GetProperty("path").GetString());
        Assert.Equal(cwd, doc.RootElement.GetProperty("cwd").GetString());
    }

    [Fact]
    public async Task Each_connection_gets_its_own_process()
    {
        var connector = UpstreamConnectors.Create(Command("cat", []), TestLimits, Loggers);
        await using var a = (StdioUpstreamConnection)await connector.ConnectAsync(CancellationToken.None);
        await using var b = (StdioUpstreamConnection)await connector.ConnectAsync(CancellationToken.None);
        Assert.NotEqual(a.ProcessId, b.ProcessId);
        await SendAsync(a, """{"to":"a"}""");
        await SendAsync(b, """{"to":"b"}""");
        Assert.Equal("""{"to":"a"}""", Encoding.UTF8.GetString((await NextEventAsync(a)).Payload.Span));
        Assert.Equal("""{"to":"b"}""", Encoding.UTF8.GetString((await NextEventAsync(b)).Payload.Span));
    }

    private static int ChildPid(UpstreamEvent e)
    {
        using var doc = JsonDocument.Parse(e.Payload);
        return doc.RootElement.GetProperty("child").GetInt32();
    }

    /// <summary>True while the process exists and is not a zombie (a killed child may wait to be reaped).</summary>
    private static bool IsRunning(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/stat");
            var state = stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[0];
            return state is not ("Z" or "X");
        }
        catch (IOException)
        {
            return false;
        }
    }
}
