using System.Buffers;
using System.Threading.Channels;

namespace Sidecar.Upstreams;

/// <summary>What an upstream connection reports to the session that owns it.</summary>
public enum UpstreamEventKind : byte
{
    /// <summary>One complete JSON-RPC message from the server (a response, a notification or a server-to-client request).</summary>
    Message,

    /// <summary>A message given to <see cref="IUpstreamConnection.SendAsync"/> could not be delivered (HTTP error, timeout...).</summary>
    SendFailed,
}

/// <summary>
/// One event from an upstream. <see cref="Payload"/> is a complete JSON-RPC message exactly as the server sent it
/// (never re-serialized), not yet scanned. <see cref="Correlation"/> ties the event to the
/// <see cref="IUpstreamConnection.SendAsync"/> call it belongs to: messages that arrived on the HTTP response of that
/// send (Streamable HTTP), or the failure of that send. It is 0 for messages that arrived on a shared channel
/// (stdio stdout, a legacy SSE stream, the Streamable HTTP GET stream).
/// </summary>
public readonly record struct UpstreamEvent(UpstreamEventKind Kind, ReadOnlyMemory<byte> Payload, long Correlation, string? Error = null);

/// <summary>
/// A connection to one upstream MCP server session: a spawned stdio process, a legacy HTTP+SSE session, or a
/// Streamable HTTP session. It moves bytes; it does not decide anything. The owning session sends the agent's own
/// <c>initialize</c> through it, so the upstream sees the agent's capabilities.
/// </summary>
public interface IUpstreamConnection : IAsyncDisposable
{
    /// <summary>Transport name for logs and errors: <c>stdio</c>, <c>sse</c>, <c>streamable-http</c>.</summary>
    string Transport { get; }

    /// <summary>
    /// Sends one JSON-RPC message (a single object, already validated by the gateway). Completes once the message has
    /// been handed to the transport (written to stdin, or the HTTP request accepted); a response arrives later as an
    /// <see cref="UpstreamEvent"/>. <paramref name="correlation"/> (non-zero) tags whatever comes back on this send.
    /// Throws <see cref="UpstreamException"/> if the connection is closed.
    /// </summary>
    ValueTask SendAsync(ReadOnlySequence<byte> message, long correlation, CancellationToken cancellationToken);

    /// <summary>Everything the server says, in order of arrival. Completes when the connection ends.</summary>
    ChannelReader<UpstreamEvent> Events { get; }

    /// <summary>Completes when the connection has ended; faulted with an <see cref="UpstreamException"/> saying why.</summary>
    Task Completion { get; }
}

/// <summary>Opens connections to one configured upstream server.</summary>
public interface IUpstreamConnector
{
    /// <summary>The server's name in the config (<c>mcpServers.NAME</c>).</summary>
    string Name { get; }

    string Transport { get; }

    /// <summary>Opens a new upstream session (spawns a process, or connects). Throws <see cref="UpstreamException"/> when unreachable.</summary>
    ValueTask<IUpstreamConnection> ConnectAsync(CancellationToken cancellationToken);
}

/// <summary>An upstream could not be reached, or went away. The message is safe to show to an agent (no secrets).</summary>
public sealed class UpstreamException(string message, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>True when the upstream reported that its session no longer exists (HTTP 404, or 400 on a known session).</summary>
    public bool SessionGone { get; init; }
}
