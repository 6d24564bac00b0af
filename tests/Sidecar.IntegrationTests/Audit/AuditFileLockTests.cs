using System.Text.Json;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Audit;

/// <summary>
/// README, sinks: "A lock (NAME.jsonl.lock) keeps a second gateway from writing the same file (start-up fails with the
/// reason)." The first gateway runs in-process; the second is its own process (<c>dotnet sidecar.dll run</c>), as an
/// operator would start it.
/// </summary>
public sealed class AuditFileLockTests : IDisposable
{
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(60) };
    private readonly FaultyServer _faulty = new();
    private readonly string _folder = Path.Combine(Path.GetTempPath(), "sidecar-lock-it-" + Guid.NewGuid().ToString("N"));

    public AuditFileLockTests()
    {
        Directory.CreateDirectory(_folder);
    }

    public void Dispose()
    {
        _http.Dispose();
        _faulty.Dispose();
        Directory.Delete(_folder, recursive: true);
    }

    private string Config(string auditFile, int port = 0) => JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["listen"] = $"127.0.0.1:{port}",
        ["mcpServers"] = new Dictionary<string, object> { [FaultyServer.Name] = _faulty.ServerConfig() },
        ["policy"] = "policy.json",
        ["audit"] = new Dictionary<string, object> { ["file"] = auditFile },
    });

    [Fact]
    public async Task A_second_gateway_on_the_same_audit_file_refuses_to_start_with_one_line_and_exit_1_and_the_first_trail_stays_intact()
    {
        var auditFile = Path.Combine(_folder, "trail", "audit.jsonl");
        var first = await SidecarHost.StartAsync(Config(auditFile), new Dictionary<string, string> { ["policy.json"] = FaultyServer.Policy });
        try
        {
            var session = await RawMcp.OpenSessionAsync(_http, first.McpUrl(FaultyServer.Name));
            await CallOkAsync(first, session, "1");
            Assert.True(File.Exists(auditFile + ".lock"), "no lock file beside the trail");
            var before = await WaitForStableAsync(auditFile, calls: 1);

            // The second gateway: its own folder, port and config, the same trail.
            var secondFolder = Path.Combine(_folder, "second");
            Directory.CreateDirectory(secondFolder);
            await File.WriteAllTextAsync(Path.Combine(secondFolder, "policy.json"), FaultyServer.Policy);
            var secondConfig = Path.Combine(secondFolder, "sidecar.json");
            var port = EverythingServer.FreeLoopbackPort();
            await File.WriteAllTextAsync(secondConfig, Config(auditFile, port));
            using var second = SidecarProcess.Start(secondConfig);
            var exit = await second.WaitForExitAsync();
            var (stdout, stderr) = (second.Stdout, second.Stderr);

            Assert.True(exit == 1, $"exit {exit}; stdout:\n{stdout}\nstderr:\n{stderr}");
            var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
            Assert.StartsWith($"audit: cannot open the audit file {auditFile}: ", line, StringComparison.Ordinal);
            Assert.Contains("another gateway", line, StringComparison.Ordinal);
            Assert.Equal("", stdout.Trim());
            Assert.Empty(_faulty.Pids().Skip(1)); // the second gateway started no upstream

            // The first gateway's trail is as it was, and the first gateway goes on recording.
            Assert.Equal(before, await File.ReadAllTextAsync(auditFile));
            await CallOkAsync(first, session, "2");
            await first.StopAsync();
            var (code, output, error) = await GatewayAuditTests.VerifyAsync(auditFile);
            Assert.True(code == 0, output + error);
            var types = (await File.ReadAllLinesAsync(auditFile)).Select(l => JsonDocument.Parse(l).RootElement.GetProperty("type").GetString());
            Assert.Equal(["audit_start", "tool_call", "tool_call", "audit_stop"], types);
        }
        finally
        {
            await first.DisposeAsync();
        }

        // Once the first gateway has stopped, the lock is free: the next gateway continues the chain.
        var next = await SidecarHost.StartAsync(Config(auditFile), new Dictionary<string, string> { ["policy.json"] = FaultyServer.Policy });
        await next.DisposeAsync();
        var (verified, says, problems) = await GatewayAuditTests.VerifyAsync(auditFile);
        Assert.True(verified == 0, says + problems);
        Assert.Contains("6 events", says, StringComparison.Ordinal);
    }

    private async Task CallOkAsync(SidecarHost host, string session, string rawId)
    {
        using var response = await RawMcp.PostAsync(_http, host.McpUrl(FaultyServer.Name), RawMcp.CallBody(rawId, "ok", """{"message":"x"}"""), session);
        var answer = await RawMcp.AnswerAsync(response);
        Assert.True(answer.TryGetProperty("result", out _), answer.GetRawText());
    }

    /// <summary>The trail once it holds audit_start and <paramref name="calls"/> tool_call records (the writer is then idle).</summary>
    private static async Task<string> WaitForStableAsync(string file, int calls)
    {
        var deadline = DateTime.UtcNow + FaultyServer.WaitBound;
        while (true)
        {
            var text = File.Exists(file) ? await File.ReadAllTextAsync(file) : "";
            if (text.EndsWith('\n') && text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length == 1 + calls)
            {
                return text;
            }
            Assert.True(DateTime.UtcNow < deadline, "the trail never held its first records: " + text);
            await Task.Delay(20);
        }
    }
}
