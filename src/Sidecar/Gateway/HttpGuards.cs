using System.Buffers;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Microsoft.Net.Http.Headers;
using Sidecar.Identity;
using Sidecar.Protocol;
using Sidecar.Sessions;

namespace Sidecar.Gateway;

/// <summary>
/// What every agent request is checked for before a session sees it (DNS-rebinding protection, media types, the
/// protocol version header), and reading its body without copying.
/// </summary>
internal static class HttpGuards
{
    /// <summary>An answer that ends a request early: HTTP status, JSON-RPC error code and message.</summary>
    public readonly record struct Refusal(int Status, int Code, string Message);

    /// <summary>The <c>WWW-Authenticate</c> challenge of a 401 (RFC 6750).</summary>
    public const string BearerChallenge = "Bearer";

    /// <summary>The RFC 9728 metadata path (MCP authorization): where a client finds the authorization servers.</summary>
    public const string ProtectedResourcePath = "/.well-known/oauth-protected-resource";

    /// <summary>
    /// <c>Bearer</c>, with <c>error="invalid_token"</c> for a token that failed validation, and with
    /// <c>resource_metadata</c> when JWTs come from named authorization servers (MCP authorization, RFC 9728).
    /// </summary>
    private static string Challenge(HttpContext context, GatewaySnapshot snapshot, AuthStatus status)
    {
        var challenge = status == AuthStatus.InvalidToken ? "Bearer error=\"invalid_token\"" : BearerChallenge;
        if (snapshot.Identities.AuthorizationServers.Count == 0)
        {
            return challenge;
        }
        var request = context.Request;
        var metadata = $"{request.Scheme}://{request.Host}{request.PathBase}{ProtectedResourcePath}{request.Path}";
        return challenge + (challenge.Length > 6 ? ", " : " ") + $"resource_metadata=\"{metadata}\"";
    }

    /// <summary>
    /// Takes the live snapshot as the request's (it serves the whole request, whatever reloads meanwhile), checks
    /// <c>Host</c> and <c>Origin</c>, then the caller's credentials, then finds the route's server. Null (and why) when
    /// the request can't go on: credentials are judged before the server is looked up, so a caller without a key
    /// gets the same answer whatever the server and learns nothing. A route without a server name (<c>/mcp</c>,
    /// <c>/sse</c>, <c>/message</c>) is the aggregated endpoint.
    /// </summary>
    public static SessionTarget? Resolve(HttpContext context, Gateway gateway, out GatewaySnapshot snapshot, out Caller caller, out Refusal refused)
    {
        snapshot = gateway.Engine.Current;
        caller = Caller.Anonymous;
        if (CheckHostAndOrigin(context.Request, snapshot.Origins, gateway.ListeningOnLoopback) is { } forbidden)
        {
            gateway.HttpLog.LogWarning("Refused a request from {Remote}: {Reason}", context.Connection.RemoteIpAddress, forbidden);
            refused = new Refusal(StatusCodes.Status403Forbidden, ErrorCodes.ServerError, forbidden);
            return null;
        }
        var name = context.Request.RouteValues["name"] as string;
        var server = name is null ? null : snapshot.Find(name);
        var found = name is null || server is not null;
        var status = snapshot.Identities.Resolve(context.Request.Headers.Authorization.Count switch
        {
            0 => [],
            1 => [context.Request.Headers.Authorization[0]],
            _ => context.Request.Headers.Authorization.ToArray(),
        }, out caller);
        if (status is AuthStatus.Anonymous or AuthStatus.Authenticated)
        {
            refused = found ? default : new Refusal(StatusCodes.Status404NotFound, ErrorCodes.ServerError, SessionMessages.UnknownServer(name));
            return found ? new SessionTarget(server) : null;
        }
        var reason = IdentityResolver.Reason(status);
        gateway.Engine.RecordAuthFailure(name is null ? AggregateSession.RouteName : server?.Name, reason, context.Connection.RemoteIpAddress?.ToString());
        if (status is AuthStatus.NoGrant or AuthStatus.UnknownGrant)
        {
            // Who it is is known; it may do nothing here.
            refused = new Refusal(StatusCodes.Status403Forbidden, ErrorCodes.ServerError, status == AuthStatus.NoGrant
                ? "Forbidden: no_grant (the token has no grant claim and no defaultGrant is configured)"
                : "Forbidden: unknown_grant (the token's grant is not one this gateway defines)");
            return null;
        }
        context.Response.Headers.WWWAuthenticate = Challenge(context, snapshot, status);
        refused = new Refusal(StatusCodes.Status401Unauthorized, ErrorCodes.ServerError, $"Unauthorized: {reason} (send Authorization: Bearer <key or token>)");
        return null;
    }

    /// <summary>Why the request's Host or Origin is not allowed (the caller answers 403), or null.</summary>
    public static string? CheckHostAndOrigin(HttpRequest request, OriginGuard guard, bool listeningOnLoopback)
    {
        var host = request.Host;
        var origins = request.Headers.Origin;
        return guard.Check(host.HasValue ? host.Value : null, listeningOnLoopback, origins.Count switch
        {
            0 => [],
            1 => [origins[0]],
            _ => origins.ToArray(),
        });
    }

    public static bool Accepts(HttpRequest request, string mediaType)
    {
        foreach (var value in request.Headers.Accept)
        {
            if (value is null)
            {
                continue;
            }
            var text = value.AsSpan();
            foreach (var range in text.Split(','))
            {
                var type = text[range].Trim();
                var semicolon = type.IndexOf(';');
                if (semicolon >= 0)
                {
                    type = type[..semicolon].TrimEnd();
                }
                if (type.Equals(mediaType, StringComparison.OrdinalIgnoreCase) || type.SequenceEqual("*/*"))
                {
                    return true;
                }
            }
        }
        return false;
    }

    public static bool IsJsonContent(HttpRequest request)
    {
        var value = request.ContentType;
        // The usual exact value needs no parsing (and no allocation); anything else is parsed.
        return string.Equals(value, "application/json", StringComparison.OrdinalIgnoreCase)
               || (MediaTypeHeaderValue.TryParse(value, out var contentType)
                   && contentType.MediaType.Equals("application/json", StringComparison.OrdinalIgnoreCase));
    }

    /// <summary>Null when the <c>MCP-Protocol-Version</c> header is absent (2025-03-26 is assumed) or a supported session version.</summary>
    public static string? CheckProtocolVersion(HttpRequest request)
    {
        var values = request.Headers[McpProtocol.ProtocolVersionHeader];
        if (values.Count == 0)
        {
            return null;
        }
        if (values.Count > 1)
        {
            return "Bad Request: more than one MCP-Protocol-Version header";
        }
        return McpProtocol.IsSessionVersion(values[0])
            ? null
            : $"Bad Request: unsupported MCP-Protocol-Version \"{values[0]}\" (supported: {McpProtocol.SessionVersionList})";
    }

    /// <summary>A body read whole, or why not (the HTTP status and message to answer with).</summary>
    public readonly record struct Body(ReadOnlySequence<byte> Buffer, int Status, string? Error)
    {
        /// <summary>The JSON-RPC code of the error: a wrong media type is a transport problem, a bad body an invalid request.</summary>
        public int Code => Status == StatusCodes.Status415UnsupportedMediaType ? ErrorCodes.ServerError : ErrorCodes.InvalidRequest;
    }

    /// <summary>
    /// Reads a whole request body without copying it, refusing anything over the size limit. A body that has already
    /// arrived (the usual case: it came with the headers) is taken without waiting. The caller gives the buffer back
    /// with <c>AdvanceTo(body.End)</c>.
    /// </summary>
    public static ValueTask<Body> ReadBodyAsync(HttpContext context, int maxBytes)
    {
        if (!IsJsonContent(context.Request))
        {
            return new ValueTask<Body>(new Body(default, StatusCodes.Status415UnsupportedMediaType, "Unsupported Media Type: Content-Type must be application/json"));
        }
        if (context.Request.ContentLength > maxBytes)
        {
            return new ValueTask<Body>(TooLarge(maxBytes)); // refused before a byte of it is read
        }
        var reader = context.Request.BodyReader;
        try
        {
            if (reader.TryRead(out var result))
            {
                var buffer = result.Buffer;
                if (buffer.Length > maxBytes)
                {
                    reader.AdvanceTo(buffer.End);
                    return new ValueTask<Body>(TooLarge(maxBytes));
                }
                if (result.IsCompleted)
                {
                    return new ValueTask<Body>(new Body(buffer, 0, null));
                }
                reader.AdvanceTo(buffer.Start, buffer.End);
            }
        }
        catch (BadHttpRequestException ex)
        {
            return new ValueTask<Body>(BadRequest(ex, maxBytes));
        }
        return ReadBodySlowAsync(context, reader, maxBytes);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private static async ValueTask<Body> ReadBodySlowAsync(HttpContext context, PipeReader reader, int maxBytes)
    {
        try
        {
            while (true)
            {
                var result = await reader.ReadAsync(context.RequestAborted).ConfigureAwait(false);
                var buffer = result.Buffer;
                if (buffer.Length > maxBytes)
                {
                    reader.AdvanceTo(buffer.End);
                    return TooLarge(maxBytes);
                }
                if (result.IsCompleted)
                {
                    return new Body(buffer, 0, null);
                }
                reader.AdvanceTo(buffer.Start, buffer.End);
            }
        }
        catch (BadHttpRequestException ex)
        {
            return BadRequest(ex, maxBytes);
        }
    }

    private static Body TooLarge(int maxBytes) =>
        new(default, StatusCodes.Status413PayloadTooLarge, $"Payload Too Large: messages are limited to {maxBytes} bytes");

    private static Body BadRequest(BadHttpRequestException ex, int maxBytes) =>
        ex.StatusCode == StatusCodes.Status413PayloadTooLarge ? TooLarge(maxBytes) : new(default, ex.StatusCode, "Bad Request: " + ex.Message);
}
