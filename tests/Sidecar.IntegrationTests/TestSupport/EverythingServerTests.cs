using System.Globalization;

namespace Sidecar.IntegrationTests.TestSupport;

/// <summary>The test servers must be reachable on loopback only (the loopback.cjs preload), whatever they ask for.</summary>
public sealed class EverythingServerTests
{
    [Theory]
    [InlineData("sse")]
    [InlineData("streamableHttp")]
    public async Task Http_servers_listen_on_127_0_0_1_only(string mode)
    {
        await using var server = mode == "sse"
            ? await EverythingServer.StartSseAsync()
            : await EverythingServer.StartStreamableHttpAsync();

        var listeners = ListeningAddresses(server.Port);
        Assert.NotEmpty(listeners);
        Assert.All(listeners, address => Assert.Equal("127.0.0.1", address));
    }

    /// <summary>Local addresses of the TCP sockets listening on <paramref name="port"/> (from /proc/net/tcp and tcp6).</summary>
    private static List<string> ListeningAddresses(int port)
    {
        var result = new List<string>();
        foreach (var file in new[] { "/proc/net/tcp", "/proc/net/tcp6" })
        {
            if (!File.Exists(file))
            {
                continue;
            }
            foreach (var line in File.ReadLines(file).Skip(1))
            {
                // "sl local_address rem_address st ...": local_address is HEXIP:HEXPORT, st 0A is LISTEN.
                var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (fields.Length < 4 || fields[3] != "0A")
                {
                    continue;
                }
                var local = fields[1].Split(':');
                if (int.Parse(local[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture) != port)
                {
                    continue;
                }
                result.Add(local[0] switch
                {
                    "0100007F" => "127.0.0.1",
                    "00000000" => "0.0.0.0",
                    "00000000000000000000000000000000" => "::",
                    "00000000000000000000000001000000" => "::1",
                    var other => other,
                });
            }
        }
        return result;
    }
}
