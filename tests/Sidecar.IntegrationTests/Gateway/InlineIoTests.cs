namespace Sidecar.IntegrationTests.Gateway;

public sealed class InlineIoTests
{
    /// <summary>The gateways these tests start run their I/O as `sidecar run` does (inline-io.runsettings).</summary>
    [Fact]
    public void The_test_host_runs_socket_completions_inline_like_sidecar_run()
    {
        Assert.Equal("1", Environment.GetEnvironmentVariable(Sidecar.Gateway.GatewayHost.InlineCompletionsVariable));
        Assert.True(Sidecar.Gateway.GatewayHost.InlineIo);
    }
}
