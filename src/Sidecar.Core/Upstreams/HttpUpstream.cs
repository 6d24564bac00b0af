using System.Buffers;
using System.Net;
using System.Net.Http.Headers;
using Microsoft.Extensions.Logging;
using Sidecar.Configuration;

namespace Sidecar.Upstreams;

/// <summary>What the two HTTP connectors share: one pooled client, the configured headers and safe descriptions.</summary>
internal sealed class HttpUpstream : IDisposable
{
    /// <summary>Headers the transports set themselves; a configured header with one of these names is ignored.</summary>
    private static readonly string[] s_reserved =
    [
        "Accept", "Content-Type", "Content-Length", "Content-Encoding", "Transfer-Encoding", "Host", "Connection",
        "Mcp-Session-Id", "MCP-Protocol-Version", "Last-Event-ID", "Upgrade", "TE", "Expect",
    ];

    private readonly KeyValuePair<string, string>[] _headers;
    private readonly SecretMask _secrets = new();

    public HttpUpstream(ServerConfig server, GatewayLimits limits, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(server.Url);
        Server = server;
        Limits = limits;
        Logger = logger;
        Url = server.Url;
        SafeUrl = Describe(server.Url);
        SseReaders = new SseReaderPool(limits.MaxMessageBytes);

        var headers = new List<KeyValuePair<string, string>>();
        foreach (var (name, value) in server.Headers)
        {
            if (Array.Exists(s_reserved, r => string.Equals(r, name, StringComparison.OrdinalIgnoreCase)))
            {
                UpstreamLog.ReservedHeaderIgnored(logger, server.Name, name);
                continue;
            }
            headers.Add(new(name, value));
            _secrets.AddHeaderValue(value);
        }
        _headers = [.. headers];

        // One handler per connector: pooled keep-alive connections shared by every session of this upstream.
        // No proxy (the upstream is next door), no redirects (they could carry credentials elsewhere), no cookies
        // (sessions of different agents must not share state), no decompression (bytes are forwarded as sent).
        var handler = new SocketsHttpHandler
        {
            UseProxy = false,
            AllowAutoRedirect = false,
            UseCookies = false,
            AutomaticDecompression = DecompressionMethods.None,
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(60),
            PooledConnectionLifetime = TimeSpan.FromMinutes(10),
            ConnectTimeout = limits.ConnectTimeout,
        };
        Client = new HttpClient(handler, disposeHandler: true) { Timeout = Timeout.InfiniteTimeSpan };
        Invoker = new HttpMessageInvoker(handler, disposeHandler: false);
    }

    public ServerConfig Server { get; }

    public string Name => Server.Name;

    public GatewayLimits Limits { get; }

    public ILogger Logger { get; }

    public HttpClient Client { get; }

    /// <summary>
    /// The same pooled handler without <see cref="HttpClient"/>'s layer (a linked cancellation source and a state
    /// machine per request, for timeouts and pending-request cancellation this class does not use): for the per-call
    /// POSTs. Requests carry absolute URLs and the default HTTP/1.1 version, as through <see cref="Client"/>.
    /// </summary>
    public HttpMessageInvoker Invoker { get; }

    /// <summary>Reusable per-request timeouts (see <see cref="RequestTimeouts"/>).</summary>
    public RequestTimeouts Timeouts { get; } = new();

    /// <summary>Parsers for the SSE answers to POSTs, reused (see <see cref="SseReaderPool"/>).</summary>
    public SseReaderPool SseReaders { get; }

    public Uri Url { get; }

    /// <summary>The URL without user info, query or fragment: safe for logs and errors.</summary>
    public string SafeUrl { get; }

    /// <summary>Adds the configured headers (credentials, usually) to a request.</summary>
    public void ApplyHeaders(HttpRequestHeaders headers)
    {
        foreach (var (name, value) in _headers)
        {
            headers.TryAddWithoutValidation(name, value);
        }
    }

    /// <summary>Removes every configured header value from a text (exception messages may quote what was sent).</summary>
    public string Redact(string text) => _secrets.Redact(text);

    /// <summary>"cannot reach upstream NAME at URL: why", redacted.</summary>
    public string Unreachable(Exception ex) => Redact($"cannot reach upstream '{Name}' at {SafeUrl}: {Reason(ex)}");

    public static string Reason(Exception ex)
    {
        // HttpRequestException wraps the socket error, which is the useful part ("Connection refused (127.0.0.1:1)").
        var inner = ex;
        while (inner.InnerException is { } next && inner is HttpRequestException or IOException)
        {
            inner = next;
        }
        return inner == ex ? ex.Message : $"{ex.Message} ({inner.Message})";
    }

    public static string Describe(Uri url) =>
        url.GetComponents(UriComponents.SchemeAndServer | UriComponents.Path, UriFormat.UriEscaped);

    public static string FormatTimeout(TimeSpan timeout) =>
        timeout.TotalSeconds >= 1 ? $"{timeout.TotalSeconds:0.###} s" : $"{timeout.TotalMilliseconds:0} ms";

    /// <summary>
    /// Whether the content has exactly one <c>Content-Type</c> whose media type (before any parameters) is
    /// <paramref name="mediaType"/>. Reads the raw header: nothing is parsed into header objects.
    /// </summary>
    public static bool IsMediaType(HttpContent content, string mediaType)
    {
        if (!content.Headers.NonValidated.TryGetValues("Content-Type", out var values) || values.Count != 1)
        {
            return false;
        }
        var type = values.ToString().AsSpan();
        var semicolon = type.IndexOf(';');
        if (semicolon >= 0)
        {
            type = type[..semicolon];
        }
        return type.Trim().Equals(mediaType, StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>Sets <c>Content-Type: application/json</c> (as a raw value: no header object to build).</summary>
    public static void SetJsonContentType(HttpContent content) => content.Headers.TryAddWithoutValidation("Content-Type", "application/json");

    /// <summary>
    /// Reads a whole response body if it is at most <paramref name="maxBytes"/>; null if it is larger (the rest is not
    /// read). The returned array is exactly the body.
    /// </summary>
    public static async ValueTask<byte[]?> ReadBodyAsync(HttpContent content, int maxBytes, CancellationToken cancellationToken)
    {
        // Typed: the handler has already parsed it to frame the body.
        var contentLength = content.Headers.ContentLength;
        if (contentLength is { } declared)
        {
            if (declared > maxBytes)
            {
                return null;
            }
            if (declared == 0)
            {
                return [];
            }
        }
        // The handler's response content hands its stream over at once: the synchronous call spares a Task.
        var stream = content.ReadAsStream(cancellationToken);
        await using (stream.ConfigureAwait(false))
        {
            var buffer = ArrayPool<byte>.Shared.Rent((int)Math.Min(maxBytes + 1L, contentLength + 1 ?? 16 * 1024));
            var length = 0;
            try
            {
                while (true)
                {
                    if (length == buffer.Length)
                    {
                        if (length > maxBytes)
                        {
                            return null;
                        }
                        var grown = ArrayPool<byte>.Shared.Rent((int)Math.Min(maxBytes + 1L, buffer.Length * 2L));
                        buffer.AsSpan(0, length).CopyTo(grown);
                        ArrayPool<byte>.Shared.Return(buffer);
                        buffer = grown;
                    }
                    var read = await stream.ReadAsync(buffer.AsMemory(length), cancellationToken).ConfigureAwait(false);
                    if (read == 0)
                    {
                        break;
                    }
                    length += read;
                    if (length > maxBytes)
                    {
                        return null;
                    }
                }
                return buffer.AsSpan(0, length).ToArray();
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
    }

    public void Dispose()
    {
        Invoker.Dispose();
        Client.Dispose();
        Timeouts.Dispose();
    }
}
