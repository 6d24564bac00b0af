using System.Buffers;
using System.Text.Json;

namespace Sidecar.Upstreams;

internal enum SessionMessage : byte
{
    /// <summary>Anything else.</summary>
    Other,

    /// <summary>An <c>initialize</c> request.</summary>
    Initialize,

    /// <summary>The <c>notifications/initialized</c> notification.</summary>
    Initialized,
}

/// <summary>
/// Cheap, allocation-free looks into a JSON-RPC message for the few facts a transport needs to run an MCP session
/// (Streamable HTTP only): is this the <c>initialize</c> request or the <c>notifications/initialized</c> notification,
/// and which <c>protocolVersion</c> did the server's initialize result choose (only until the session is set up); is a
/// message on a POST's event stream the response, and was the POST a request (to know whether a stream that ended
/// still owes an answer). Nothing here validates: the gateway has already done that, and an unreadable message is just "other".
/// </summary>
internal static class JsonRpcPeek
{
    private static readonly JsonReaderOptions s_options = new() { MaxDepth = 256 };

    /// <summary>Finds the top-level <c>method</c> and classifies it.</summary>
    public static SessionMessage Classify(ReadOnlySequence<byte> message)
    {
        try
        {
            var reader = new Utf8JsonReader(message, s_options);
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                return SessionMessage.Other;
            }
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                var isMethod = reader.ValueTextEquals("method"u8);
                if (!reader.Read())
                {
                    return SessionMessage.Other;
                }
                if (isMethod)
                {
                    if (reader.TokenType != JsonTokenType.String)
                    {
                        return SessionMessage.Other;
                    }
                    if (reader.ValueTextEquals("initialize"u8))
                    {
                        return SessionMessage.Initialize;
                    }
                    return reader.ValueTextEquals("notifications/initialized"u8) ? SessionMessage.Initialized : SessionMessage.Other;
                }
                reader.Skip();
            }
        }
        catch (JsonException)
        {
        }
        return SessionMessage.Other;
    }

    /// <summary>
    /// True for a response: a top-level <c>result</c> or <c>error</c> comes before any <c>method</c>. Stops at the
    /// first of those names, so the body of a large result is never read through.
    /// </summary>
    public static bool IsResponse(ReadOnlySpan<byte> message)
    {
        try
        {
            var reader = new Utf8JsonReader(message, s_options);
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                return false;
            }
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                if (reader.ValueTextEquals("result"u8) || reader.ValueTextEquals("error"u8))
                {
                    return true;
                }
                if (reader.ValueTextEquals("method"u8) || !reader.Read())
                {
                    return false;
                }
                reader.Skip();
            }
        }
        catch (JsonException)
        {
        }
        return false;
    }

    /// <summary>True for a request: the top level has both <c>method</c> and <c>id</c>.</summary>
    public static bool IsRequest(ReadOnlySpan<byte> message)
    {
        try
        {
            var reader = new Utf8JsonReader(message, s_options);
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                return false;
            }
            var method = false;
            var id = false;
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                method |= reader.ValueTextEquals("method"u8);
                id |= reader.ValueTextEquals("id"u8);
                if (method && id)
                {
                    return true;
                }
                if (!reader.Read())
                {
                    return false;
                }
                reader.Skip();
            }
        }
        catch (JsonException)
        {
        }
        return false;
    }

    /// <summary>
    /// The <c>result.protocolVersion</c> of a successful response (the server's answer to <c>initialize</c>), if the
    /// message is one and the version is a plausible header value (letters, digits, <c>.</c>, <c>-</c>, at most 32).
    /// </summary>
    public static string? InitializeResultVersion(ReadOnlySpan<byte> message)
    {
        try
        {
            var reader = new Utf8JsonReader(message, s_options);
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                return null;
            }
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                var isResult = reader.ValueTextEquals("result"u8);
                if (!reader.Read())
                {
                    return null;
                }
                if (!isResult)
                {
                    reader.Skip();
                    continue;
                }
                if (reader.TokenType != JsonTokenType.StartObject)
                {
                    return null;
                }
                while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
                {
                    var isVersion = reader.ValueTextEquals("protocolVersion"u8);
                    if (!reader.Read())
                    {
                        return null;
                    }
                    if (isVersion)
                    {
                        return reader.TokenType == JsonTokenType.String && !reader.ValueIsEscaped
                            && reader.ValueSpan.Length is > 0 and <= 32 && IsVersionText(reader.ValueSpan)
                            ? reader.GetString()
                            : null;
                    }
                    reader.Skip();
                }
                return null;
            }
        }
        catch (JsonException)
        {
        }
        return null;
    }

    private static bool IsVersionText(ReadOnlySpan<byte> text)
    {
        foreach (var b in text)
        {
            if (!(b is >= (byte)'0' and <= (byte)'9' or >= (byte)'a' and <= (byte)'z' or >= (byte)'A' and <= (byte)'Z' or (byte)'.' or (byte)'-'))
            {
                return false;
            }
        }
        return true;
    }
}
