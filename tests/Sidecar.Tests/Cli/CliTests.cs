using Sidecar.Cli;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Cli;

public class CliTests
{
    internal static async Task<(int Exit, string Out, string Err)> Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var exit = await SidecarCli.InvokeAsync(args, output, error);
        return (exit, output.ToString(), error.ToString());
    }

    [Fact]
    public async Task Validate_accepts_every_example()
    {
        var (exit, output, error) = await Run(["validate", .. Repo.ExamplePolicies]);
        Assert.Equal(0, exit);
        Assert.Equal("", error);
        Assert.Equal(Repo.ExamplePolicies.Length, output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
    }

    [Fact]
    public async Task Validate_of_a_config_reports_the_errors_of_every_policy_it_names_and_warns_about_a_server_without_one()
    {
        var folder = Path.Combine(Path.GetTempPath(), $"sidecar-validate-{Guid.NewGuid():N}");
        Directory.CreateDirectory(folder);
        try
        {
            await File.WriteAllTextAsync(Path.Combine(folder, "a.json"), """{ "version": "1", "default": "nope" }""");
            await File.WriteAllTextAsync(Path.Combine(folder, "b.json"), """{ "version": "1", "tools": { "t": { "action": "maybe" } } }""");
            await File.WriteAllTextAsync(Path.Combine(folder, "good.json"), """{ "version": "1", "tools": { "t": {} } }""");
            var config = Path.Combine(folder, "sidecar.json");
            await File.WriteAllTextAsync(config, """
                { "mcpServers": {
                    "one": { "command": "x", "policy": "a.json" },
                    "two": { "command": "x", "policy": "b.json" },
                    "three": { "command": "x", "policy": "good.json" },
                    "bare": { "command": "x" } } }
                """);
            var (exit, output, error) = await Run("validate", config);
            Assert.Equal(1, exit);
            Assert.Contains($"{Path.Combine(folder, "a.json")}:1:", error, StringComparison.Ordinal);
            Assert.Contains("$.default", error, StringComparison.Ordinal);
            Assert.Contains($"{Path.Combine(folder, "b.json")}:1:", error, StringComparison.Ordinal);
            Assert.Contains("$.tools.t.action", error, StringComparison.Ordinal);
            Assert.Contains($"{config}: 2 errors in 2 policies", error, StringComparison.Ordinal);
            Assert.Contains("warning: " + config + ": server \"bare\" has no policy", error, StringComparison.Ordinal);
            Assert.Contains("three: ", output, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public async Task Validate_prints_every_error_with_file_line_and_path()
    {
        var file = Path.Combine(Path.GetTempPath(), $"sidecar-bad-{Guid.NewGuid():N}.json");
        await File.WriteAllTextAsync(file, "{\n  \"version\": \"1\",\n  \"default\": \"nope\",\n  \"tools\": { \"t\": { \"limits\": [ { \"counter\": \"c\", \"window\": \"fortnight\", \"max\": 1 } ] } }\n}\n");
        try
        {
            var (exit, _, error) = await Run("validate", file);
            Assert.Equal(1, exit);
            Assert.Contains($"{file}:3:14: $.default: invalid default \"nope\"", error, StringComparison.Ordinal);
            Assert.Contains($"{file}:4:", error, StringComparison.Ordinal);
            Assert.Contains("$.tools.t.limits[0].window", error, StringComparison.Ordinal);
            Assert.Contains("2 errors", error, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Fact]
    public async Task Explain_names_the_rule_and_reason()
    {
        var policy = Repo.PathOf("examples", "policies", "product-mitmproxy.json");
        var (exit, output, _) = await Run("explain", "--policy", policy, "--tool", "set_option", "--args", """{"key":"mode"}""");
        Assert.Equal(0, exit);
        Assert.Contains("decision:  deny", output, StringComparison.Ordinal);
        Assert.Contains("rule:      tools.set_option.deny_if[0]", output, StringComparison.Ordinal);
        Assert.Contains("reason:    network options are managed by the platform", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Explain_repeat_shows_rate_limits_as_json()
    {
        var policy = Repo.PathOf("examples", "policies", "seed-mitmproxy-start_proxy.json");
        var (exit, output, _) = await Run("explain", "-p", policy, "-t", "start_proxy", "--repeat", "11", "--json");
        Assert.Equal(0, exit);
        Assert.Contains("\"decision\": \"rate_limited\"", output, StringComparison.Ordinal);
        // One token every 6 s; the calls themselves take a little of that time.
        var retry = int.Parse(System.Text.RegularExpressions.Regex.Match(output, "\"retryAfterMs\": (\\d+)").Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(retry, 5000, 6000);
    }

    [Theory]
    [InlineData("[1]")]
    [InlineData("{")]
    [InlineData("""{"a":1,"a":2}""")]
    public async Task Explain_rejects_arguments_that_are_not_one_json_object(string args)
    {
        var policy = Repo.PathOf("examples", "policies", "product-mitmproxy.json");
        var (exit, _, error) = await Run("explain", "-p", policy, "-t", "x", "--args", args);
        Assert.Equal(2, exit);
        Assert.Contains("--args", error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Unknown_command_is_a_usage_error()
    {
        var (exit, _, _) = await Run("frobnicate");
        Assert.Equal(2, exit);
        (exit, _, _) = await Run("explain", "--tool", "t"); // --policy missing
        Assert.Equal(2, exit);
    }
}
