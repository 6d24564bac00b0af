using Microsoft.Extensions.Logging;
using Sidecar.Configuration;

namespace Sidecar.Upstreams;

/// <summary>Creates the connector for a configured upstream server.</summary>
public static class UpstreamConnectors
{
    /// <summary>
    /// The connector for <paramref name="server"/>'s transport: <see cref="StdioUpstreamConnector"/> (or
    /// <see cref="SharedStdioConnector"/> with <c>"share": true</c>), <see cref="SseUpstreamConnector"/> (legacy
    /// HTTP+SSE) or <see cref="StreamableHttpUpstreamConnector"/>. The HTTP connectors own a pooled HTTP client shared
    /// by all their connections, and the shared stdio connector owns its process: they are <see cref="IDisposable"/>;
    /// dispose them when the upstream is removed (after its connections).
    /// </summary>
    public static IUpstreamConnector Create(ServerConfig server, GatewayLimits limits, ILoggerFactory? loggers)
    {
        ArgumentNullException.ThrowIfNull(server);
        ArgumentNullException.ThrowIfNull(limits);
        return server.Transport switch
        {
            UpstreamTransport.Stdio when server.Share => new SharedStdioConnector(server, limits, loggers),
            UpstreamTransport.Stdio => new StdioUpstreamConnector(server, limits, loggers),
            UpstreamTransport.Sse => new SseUpstreamConnector(server, limits, loggers),
            UpstreamTransport.StreamableHttp => new StreamableHttpUpstreamConnector(server, limits, loggers),
            _ => throw new ArgumentException($"server '{server.Name}' has an unknown transport", nameof(server)),
        };
    }
}
