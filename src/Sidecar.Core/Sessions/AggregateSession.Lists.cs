using System.Buffers;
using System.Buffers.Text;
using System.Reflection;
using System.Text.Json;
using Sidecar.Identity;
using Sidecar.JsonRpc;
using Sidecar.Protocol;

namespace Sidecar.Sessions;

/// <summary>The four lists the aggregated endpoint merges, and what it does to each item.</summary>
internal readonly record struct ListKind(string Method, string Items, bool Renames, string? UriMember)
{
    public static ListKind Tools { get; } = new("tools/list", "tools", true, null);
    public static ListKind Prompts { get; } = new("prompts/list", "prompts", true, null);
    public static ListKind Resources { get; } = new("resources/list", "resources", false, "uri");
    public static ListKind Templates { get; } = new("resources/templates/list", "resourceTemplates", false, "uriTemplate");

    public static ListKind Of(McpMethod method) => method switch
    {
        McpMethod.ToolsList => Tools,
        McpMethod.PromptsList => Prompts,
        McpMethod.ResourcesList => Resources,
        _ => Templates,
    };
}

/// <summary>The aggregate's own <c>initialize</c> result and the merged lists (with the aggregate's cursors).</summary>
internal sealed partial class AggregateSession
{
    private const string CursorPrefix = "sidecar-aggregate.";

    private static readonly JsonDocumentOptions s_documentOptions = new() { MaxDepth = 128 };

    private static readonly string s_version =
        typeof(AggregateSession).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "dev";

    /// <summary>
    /// Joins every server (each initialized with the agent's own params, so each sees the agent's capabilities) and
    /// answers with the aggregate's result: the agent's protocol version when it is a session-era one (each server
    /// speaks its own with Sidecar), every capability the aggregate routes, and the servers' instructions.
    /// </summary>
    private async Task<byte[]> InitializeAsync(GatewaySnapshot snapshot, Caller caller, byte[] rawId, byte[] initializeParams, CancellationToken cancellationToken)
    {
        if (Interlocked.CompareExchange(ref _initializeParams, initializeParams, null) is not null)
        {
            return JsonRpcResponses.Error(rawId, ErrorCodes.InvalidRequest, SessionMessages.AlreadyInitialized);
        }
        await JoinAsync(snapshot, caller, cancellationToken).ConfigureAwait(false);
        var requested = RequestedVersion(initializeParams);
        var version = McpProtocol.IsSessionVersion(requested) ? McpProtocol.Intern(requested)! : McpProtocol.V20251125;

        var buffer = new ArrayBufferWriter<byte>(1024);
        using (var writer = new Utf8JsonWriter(buffer, JsonRpcResponses.s_writerOptions))
        {
            StartResult(writer, rawId);
            writer.WriteString("protocolVersion"u8, version);
            writer.WriteStartObject("capabilities"u8);
            writer.WriteStartObject("tools"u8);
            writer.WriteBoolean("listChanged"u8, true);
            writer.WriteEndObject();
            writer.WriteStartObject("prompts"u8);
            writer.WriteBoolean("listChanged"u8, true);
            writer.WriteEndObject();
            writer.WriteStartObject("resources"u8);
            writer.WriteBoolean("subscribe"u8, true);
            writer.WriteBoolean("listChanged"u8, true);
            writer.WriteEndObject();
            writer.WriteStartObject("logging"u8);
            writer.WriteEndObject();
            writer.WriteStartObject("completions"u8);
            writer.WriteEndObject();
            writer.WriteEndObject();
            writer.WriteStartObject("serverInfo"u8);
            writer.WriteString("name"u8, "sidecar"u8);
            writer.WriteString("title"u8, "Sidecar (aggregated endpoint)"u8);
            writer.WriteString("version"u8, s_version);
            writer.WriteEndObject();
            if (Instructions() is { } instructions)
            {
                writer.WriteString("instructions"u8, instructions);
            }
            writer.WriteEndObject();
            writer.WriteEndObject();
        }
        Volatile.Write(ref _protocolVersion, version);
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>Writes <c>{"jsonrpc":"2.0","id":ID,"result":{</c>: the caller writes the result's members and closes both objects.</summary>
    private static void StartResult(Utf8JsonWriter writer, byte[] rawId)
    {
        writer.WriteStartObject();
        writer.WriteString("jsonrpc"u8, "2.0"u8);
        writer.WritePropertyName("id"u8);
        writer.WriteRawValue(rawId, skipInputValidation: true);
        writer.WriteStartObject("result"u8);
    }

    /// <summary>The servers' instructions, each under its server's name, in config order.</summary>
    private string? Instructions()
    {
        System.Text.StringBuilder? text = null;
        foreach (var config in _engine.Current.Config.Servers)
        {
            if (_members.TryGetValue(config.Name, out var member) && member.Instructions is { Length: > 0 } instructions)
            {
                text ??= new System.Text.StringBuilder("This endpoint serves the tools of several servers, named server")
                    .Append(Separator).Append("tool.");
                text.Append("\n\n").Append(member.Name).Append(": ").Append(instructions);
            }
        }
        return text?.ToString();
    }

    private static string? RequestedVersion(byte[] initializeParams) => StringMember(initializeParams, "protocolVersion"u8);

    /// <summary>Positions <paramref name="reader"/> (before a JSON object) on the value of the object's member <paramref name="name"/>; false when it has none.</summary>
    private static bool SeekMember(ref Utf8JsonReader reader, ReadOnlySpan<byte> name)
    {
        if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
        {
            return false;
        }
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            var found = reader.ValueTextEquals(name);
            reader.Read();
            if (found)
            {
                return true;
            }
            reader.Skip();
        }
        return false;
    }

    /// <summary>The string member <paramref name="name"/> of the JSON object <paramref name="json"/>; null when absent or not a string.</summary>
    private static string? StringMember(ReadOnlySpan<byte> json, ReadOnlySpan<byte> name)
    {
        if (json.IsEmpty)
        {
            return null;
        }
        var reader = new Utf8JsonReader(json);
        return SeekMember(ref reader, name) && reader.TokenType == JsonTokenType.String ? reader.GetString() : null;
    }

    /// <summary>Why an answer is a failure (its error message), or null for a result.</summary>
    private static string? FailureOf(ReadOnlySpan<byte> answer)
    {
        if (JsonRpcScanner.Scan(answer, out var scan) != ScanStatus.Ok)
        {
            return "an invalid answer";
        }
        if (scan.Kind == JsonRpcMessageKind.Response)
        {
            return null;
        }
        try
        {
            using var document = JsonDocument.Parse(answer.ToArray(), s_documentOptions);
            return document.RootElement.TryGetProperty("error"u8, out var error) && error.TryGetProperty("message"u8, out var message)
                && message.ValueKind == JsonValueKind.String
                ? message.GetString()
                : "an error";
        }
        catch (JsonException)
        {
            return "an error";
        }
    }

    private static string? InstructionsOf(ReadOnlySpan<byte> answer)
    {
        using var document = JsonDocument.Parse(answer.ToArray(), s_documentOptions);
        return document.RootElement.TryGetProperty("result"u8, out var result) && result.ValueKind == JsonValueKind.Object
            && result.TryGetProperty("instructions"u8, out var instructions) && instructions.ValueKind == JsonValueKind.String
            ? instructions.GetString()
            : null;
    }

    /// <summary>
    /// A merged list: every member that is up (or, with a cursor, the members it names, each at its own cursor) is
    /// asked through its session (a <c>tools/list</c> comes back filtered by that server's policy for the caller),
    /// and the pages are joined in config order, tools and prompts renamed <c>{server}{separator}{name}</c>. A
    /// <c>nextCursor</c> of the aggregate's own carries every member's next cursor. A member that fails to answer is
    /// taken for down: its items are left out, and it is revived in the background.
    /// </summary>
    private async Task<byte[]> ListAsync(GatewaySnapshot snapshot, Caller caller, ListKind kind, ReadOnlySequence<byte> message, JsonRpcScan scan,
        byte[] rawId, CancellationToken cancellationToken)
    {
        var parameters = scan.Params.IsEmpty ? null : message.Slice(scan.Params.Start, scan.Params.Length).ToArray();
        var cursor = parameters is null ? null : CursorOf(parameters);
        List<(string Server, string? Cursor)> targets = [];
        if (cursor is not null)
        {
            if (!TryDecodeCursor(cursor, targets))
            {
                return JsonRpcResponses.Error(rawId, ErrorCodes.InvalidParams, "Invalid params: unknown cursor");
            }
        }
        else
        {
            foreach (var config in snapshot.Config.Servers)
            {
                if (_members.TryGetValue(config.Name, out var member) && member.IsUp)
                {
                    targets.Add((config.Name, null));
                }
            }
        }

        var asked = new List<(AggregateMember Member, Task<ReadOnlyMemory<byte>?> Answer)>(targets.Count);
        foreach (var (server, serverCursor) in targets)
        {
            if (_members.TryGetValue(server, out var member))
            {
                var pageParams = serverCursor is null ? parameters : CursorParams(serverCursor);
                asked.Add((member, AskAsync(member, snapshot, caller, kind.Method, pageParams, cancellationToken)));
            }
        }

        var next = new List<(string Server, string Cursor)>();
        var buffer = new ArrayBufferWriter<byte>(4096);
        using (var writer = new Utf8JsonWriter(buffer, JsonRpcResponses.s_writerOptions))
        {
            StartResult(writer, rawId);
            writer.WriteStartArray(kind.Items);
            foreach (var (member, answer) in asked)
            {
                var payload = await answer.ConfigureAwait(false);
                if (payload is null)
                {
                    continue;
                }
                if (WritePage(writer, member, kind, payload.Value) is { } failure)
                {
                    if (failure.Length > 0)
                    {
                        SetUp(member, false, failure);
                    }
                    continue;
                }
                if (NextCursorOf(payload.Value) is { } memberNext)
                {
                    next.Add((member.Name, memberNext));
                }
            }
            writer.WriteEndArray();
            if (next.Count > 0)
            {
                writer.WriteString("nextCursor"u8, EncodeCursor(next));
            }
            writer.WriteEndObject();
            writer.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>
    /// Writes a member's items; returns null when it answered with a page, else why not: an empty reason for an error
    /// that says nothing about the server being down (say, method not found), else the error's message.
    /// </summary>
    private string? WritePage(Utf8JsonWriter writer, AggregateMember member, ListKind kind, ReadOnlyMemory<byte> payload)
    {
        using var document = JsonDocument.Parse(payload, s_documentOptions);
        var root = document.RootElement;
        if (root.TryGetProperty("error"u8, out var error))
        {
            var code = error.TryGetProperty("code"u8, out var codeElement) && codeElement.TryGetInt32(out var c) ? c : 0;
            var text = error.TryGetProperty("message"u8, out var messageElement) && messageElement.ValueKind == JsonValueKind.String
                ? messageElement.GetString() ?? "an error"
                : "an error";
            return code is ErrorCodes.UpstreamUnavailable or ErrorCodes.UpstreamTimeout ? text : "";
        }
        if (!root.TryGetProperty("result"u8, out var result) || result.ValueKind != JsonValueKind.Object
            || !result.TryGetProperty(kind.Items, out var items) || items.ValueKind != JsonValueKind.Array)
        {
            return "";
        }
        foreach (var item in items.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Object)
            {
                continue;
            }
            writer.WriteStartObject();
            foreach (var property in item.EnumerateObject())
            {
                if (kind.Renames && property.NameEquals("name"u8) && property.Value.ValueKind == JsonValueKind.String)
                {
                    writer.WriteString("name"u8, member.Prefix + property.Value.GetString());
                    continue;
                }
                if (kind.UriMember is { } uriMember && property.NameEquals(uriMember) && property.Value.ValueKind == JsonValueKind.String)
                {
                    Own(kind, property.Value.GetString()!, member.Name);
                }
                property.WriteTo(writer);
            }
            writer.WriteEndObject();
        }
        return null;
    }

    /// <summary>Remembers which server listed a resource (by URI) or a template (by the fixed text before its first expression).</summary>
    private void Own(ListKind kind, string uri, string server)
    {
        if (kind.UriMember == "uri")
        {
            _resourceOwners[uri] = server;
            return;
        }
        var expression = uri.IndexOf('{', StringComparison.Ordinal);
        var prefix = expression < 0 ? uri : uri[..expression];
        if (prefix.Length > 0)
        {
            _templateOwners[prefix] = server;
        }
    }

    private static string? CursorOf(byte[] parameters) => StringMember(parameters, "cursor"u8);

    private static string? NextCursorOf(ReadOnlyMemory<byte> payload)
    {
        using var document = JsonDocument.Parse(payload, s_documentOptions);
        return document.RootElement.TryGetProperty("result"u8, out var result) && result.ValueKind == JsonValueKind.Object
            && result.TryGetProperty("nextCursor"u8, out var next) && next.ValueKind == JsonValueKind.String
            ? next.GetString()
            : null;
    }

    private static byte[] CursorParams(string cursor)
    {
        var buffer = new ArrayBufferWriter<byte>(cursor.Length + 16);
        using (var writer = new Utf8JsonWriter(buffer, JsonRpcResponses.s_writerOptions))
        {
            writer.WriteStartObject();
            writer.WriteString("cursor"u8, cursor);
            writer.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>The aggregate's cursor: <c>sidecar-aggregate.</c> and base64url of <c>[[server, cursor], …]</c>.</summary>
    internal static string EncodeCursor(List<(string Server, string Cursor)> next)
    {
        var buffer = new ArrayBufferWriter<byte>(128);
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartArray();
            foreach (var (server, cursor) in next)
            {
                writer.WriteStartArray();
                writer.WriteStringValue(server);
                writer.WriteStringValue(cursor);
                writer.WriteEndArray();
            }
            writer.WriteEndArray();
        }
        return CursorPrefix + Base64Url.EncodeToString(buffer.WrittenSpan);
    }

    /// <summary>Reads a cursor of <see cref="EncodeCursor"/>; false for anything else.</summary>
    internal static bool TryDecodeCursor(string cursor, List<(string Server, string? Cursor)> targets)
    {
        if (!cursor.StartsWith(CursorPrefix, StringComparison.Ordinal))
        {
            return false;
        }
        byte[] json;
        try
        {
            json = Base64Url.DecodeFromChars(cursor.AsSpan(CursorPrefix.Length));
        }
        catch (FormatException)
        {
            return false;
        }
        try
        {
            var reader = new Utf8JsonReader(json);
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartArray)
            {
                return false;
            }
            while (reader.Read() && reader.TokenType == JsonTokenType.StartArray)
            {
                if (!reader.Read() || reader.TokenType != JsonTokenType.String)
                {
                    return false;
                }
                var server = reader.GetString()!;
                if (!reader.Read() || reader.TokenType != JsonTokenType.String)
                {
                    return false;
                }
                targets.Add((server, reader.GetString()));
                if (!reader.Read() || reader.TokenType != JsonTokenType.EndArray)
                {
                    return false;
                }
            }
            return reader.TokenType == JsonTokenType.EndArray && targets.Count > 0;
        }
        catch (JsonException)
        {
            return false;
        }
    }
}
