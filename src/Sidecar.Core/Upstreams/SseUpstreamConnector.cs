using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Sidecar.Configuration;

namespace Sidecar.Upstreams;

/// <summary>
/// Opens legacy HTTP+SSE upstream sessions (protocol 2024-11-05): each <see cref="ConnectAsync"/> opens its own
/// <c>GET url</c> event stream, i.e. its own server session. See <see cref="SseUpstreamConnection"/>.
/// </summary>
/// <remarks>Owns one pooled HTTP client shared by its connections; dispose it after them.</remarks>
public sealed class SseUpstreamConnector : IUpstreamConnector, IDisposable
{
    private readonly HttpUpstream _http;

    public SseUpstreamConnector(ServerConfig server, GatewayLimits limits, ILoggerFactory? loggers)
    {
        ArgumentNullException.ThrowIfNull(server);
        ArgumentNullException.ThrowIfNull(limits);
        if (server.Transport != UpstreamTransport.Sse || server.Url is null)
        {
            throw new ArgumentException($"server '{server.Name}' is not an SSE server with a url", nameof(server));
        }
        _http = new HttpUpstream(server, limits, loggers?.CreateLogger(UpstreamLog.Category) ?? NullLogger.Instance);
    }

    public string Name => _http.Name;

    public string Transport => "sse";

    public async ValueTask<IUpstreamConnection> ConnectAsync(CancellationToken cancellationToken) =>
        await SseUpstreamConnection.ConnectAsync(_http, cancellationToken).ConfigureAwait(false);

    public void Dispose() => _http.Dispose();

    public override string ToString() => _http.Server.ToString();
}
