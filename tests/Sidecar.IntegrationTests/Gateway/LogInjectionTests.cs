using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Gateway;

/// <summary>
/// A tool name an agent sends cannot forge a log line or put raw control characters on the operator's terminal:
/// `sidecar run` (its own process, its real stderr) logs a denied call whose name holds a newline and a fake entry,
/// an ANSI escape and a NUL, each as an escape on the one line of its entry.
/// </summary>
public sealed class LogInjectionTests : IDisposable
{
    private const string Forged = "FAKE 2026-12-01T00:00:00.000Z Information Sidecar: forged";

    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(30) };

    public void Dispose() => _http.Dispose();

    [Fact]
    public async Task Control_characters_in_a_tool_name_are_escaped_in_the_log_and_forge_no_line()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        var folder = Path.Combine(Path.GetTempPath(), "sidecar-log-it-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        try
        {
            var port = EverythingServer.FreeLoopbackPort();
            var configPath = Path.Combine(folder, "sidecar.json");
            await File.WriteAllTextAsync(Path.Combine(folder, "policy.json"), """{ "version": "1", "default": "deny" }""");
            await File.WriteAllTextAsync(configPath, JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["listen"] = $"127.0.0.1:{port}",
                ["mcpServers"] = new Dictionary<string, object>
                {
                    ["everything"] = new Dictionary<string, object> { ["command"] = "node", ["args"] = new[] { McpServerFixtures.EverythingEntry, "stdio" } },
                },
                ["policy"] = "policy.json",
                ["logging"] = new Dictionary<string, object> { ["format"] = "text" }, // JSON lines: DrainTests.Logs_are_json_lines
            }));

            var start = new ProcessStartInfo("dotnet")
            {
                RedirectStandardError = true,
                RedirectStandardOutput = true,
                UseShellExecute = false,
                WorkingDirectory = folder,
            };
            start.ArgumentList.Add(typeof(Sidecar.Gateway.GatewayHost).Assembly.Location);
            start.ArgumentList.Add("run");
            start.ArgumentList.Add("--config");
            start.ArgumentList.Add(configPath);
            using var process = Process.Start(start)!;
            // The raw bytes: a reader that decodes lines would hide what a terminal or a log shipper gets.
            var stderr = new MemoryStream();
            var stdout = new MemoryStream();
            var readErr = process.StandardError.BaseStream.CopyToAsync(stderr);
            var readOut = process.StandardOutput.BaseStream.CopyToAsync(stdout);
            try
            {
                var url = new Uri($"http://127.0.0.1:{port}/servers/everything/mcp");
                await WaitReadyAsync(process, port);
                var session = await RawMcp.OpenSessionAsync(_http, url);
                var names = new[] { $"x\\n{Forged}", "\\u001b[31mred", "a\\u0000b" }; // as JSON escapes
                for (var i = 0; i < names.Length; i++)
                {
                    using var response = await RawMcp.PostAsync(_http, url,
                        $$"""{"jsonrpc":"2.0","id":{{i + 1}},"method":"tools/call","params":{"name":"{{names[i]}}","arguments":{} } }""", session);
                    var body = await response.Content.ReadAsStringAsync();
                    Assert.True(response.StatusCode == HttpStatusCode.OK, body);
                    Assert.Contains("-32010", body, StringComparison.Ordinal); // denied
                }
            }
            finally
            {
                if (!process.HasExited)
                {
                    using var term = Process.Start("kill", ["-TERM", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
                    await term.WaitForExitAsync();
                    using var exited = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                    try
                    {
                        await process.WaitForExitAsync(exited.Token);
                    }
                    catch (OperationCanceledException)
                    {
                        process.Kill(entireProcessTree: true);
                    }
                }
                await Task.WhenAll(readErr, readOut).WaitAsync(TimeSpan.FromSeconds(30));
            }

            var bytes = stderr.ToArray();
            var log = Encoding.UTF8.GetString(bytes);
            Assert.True(Array.IndexOf(bytes, (byte)0x1b) < 0, "ESC in stderr:\n" + log);
            Assert.True(Array.IndexOf(bytes, (byte)0x00) < 0, "NUL in stderr:\n" + log);
            var lines = log.Split('\n');
            Assert.DoesNotContain(lines, line => line.StartsWith("FAKE", StringComparison.Ordinal));
            Assert.Contains(lines, line => line.Contains($"Blocked everything/x\\n{Forged} (", StringComparison.Ordinal));
            Assert.Contains(lines, line => line.Contains("Blocked everything/\\u001b[31mred (", StringComparison.Ordinal));
            Assert.Contains(lines, line => line.Contains("Blocked everything/a\\u0000b (", StringComparison.Ordinal));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private async Task WaitReadyAsync(Process process, int port)
    {
        var ready = Stopwatch.StartNew();
        while (true)
        {
            Assert.False(process.HasExited, "the gateway exited");
            Assert.True(ready.Elapsed < TimeSpan.FromSeconds(60), "the gateway did not get ready");
            try
            {
                using var response = await _http.GetAsync(new Uri($"http://127.0.0.1:{port}/readyz"));
                if (response.IsSuccessStatusCode)
                {
                    return;
                }
            }
            catch (HttpRequestException)
            {
                // not listening yet
            }
            await Task.Delay(50);
        }
    }
}
