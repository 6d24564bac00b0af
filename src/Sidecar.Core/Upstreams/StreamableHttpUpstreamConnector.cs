using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Sidecar.Configuration;

namespace Sidecar.Upstreams;

/// <summary>
/// Opens Streamable HTTP upstream sessions (MCP 2025-03-26, 2025-06-18, 2025-11-25). See
/// <see cref="StreamableHttpUpstreamConnection"/>. <see cref="ConnectAsync"/> does no I/O: the server session is
/// created by the <c>initialize</c> request the owning session sends, so an unreachable server shows up as a
/// <see cref="UpstreamEventKind.SendFailed"/> for that first send.
/// </summary>
/// <remarks>Owns one pooled HTTP client shared by its connections; dispose it after them.</remarks>
public sealed class StreamableHttpUpstreamConnector : IUpstreamConnector, IStatelessUpstream, IDisposable
{
    private readonly HttpUpstream _http;
    private readonly StatelessHttpUpstream _stateless;

    public StreamableHttpUpstreamConnector(ServerConfig server, GatewayLimits limits, ILoggerFactory? loggers)
    {
        ArgumentNullException.ThrowIfNull(server);
        ArgumentNullException.ThrowIfNull(limits);
        if (server.Transport != UpstreamTransport.StreamableHttp || server.Url is null)
        {
            throw new ArgumentException($"server '{server.Name}' is not a Streamable HTTP server with a url", nameof(server));
        }
        _http = new HttpUpstream(server, limits, loggers?.CreateLogger(UpstreamLog.Category) ?? NullLogger.Instance);
        _stateless = new StatelessHttpUpstream(_http);
    }

    public ValueTask<bool> SpeaksStatelessAsync(CancellationToken cancellationToken) => _stateless.SpeaksStatelessAsync(cancellationToken);

    public ValueTask<StatelessExchange> SendStatelessAsync(ReadOnlyMemory<byte> request, IReadOnlyList<KeyValuePair<string, string>> mcpHeaders,
        CancellationToken cancellationToken) => _stateless.SendAsync(request, mcpHeaders, cancellationToken);

    public string Name => _http.Name;

    public string Transport => "streamable-http";

    public ValueTask<IUpstreamConnection> ConnectAsync(CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return ValueTask.FromResult<IUpstreamConnection>(new StreamableHttpUpstreamConnection(_http));
    }

    public void Dispose() => _http.Dispose();

    public override string ToString() => _http.Server.ToString();
}
