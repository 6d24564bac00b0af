using System.Buffers;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Sidecar.Approvals;
using Sidecar.Catalogue;
using Sidecar.Sessions;

namespace Sidecar.Gateway;

/// <summary>Marks a connection accepted on the admin listener (set by the listener's connection middleware).</summary>
internal sealed class AdminConnectionFeature
{
    public static readonly AdminConnectionFeature Instance = new();
}

/// <summary>
/// The admin API, on its own listener (<c>admin.listen</c>) and never on the agent's: every request needs
/// <c>Authorization: Bearer</c> with <c>admin.token</c> (compared in constant time), else 401.
/// <list type="bullet">
/// <item><c>GET /v1/approvals[?status=all]</c>: pending approvals (with <c>all</c>, the recent decided ones too).</item>
/// <item><c>POST /v1/approvals/{id}/approve|deny</c> with an optional <c>{"reason", "by"}</c>: 200 with the approval, 404, 409.</item>
/// <item><c>POST /v1/reload</c>: 200 <c>{"applied": true, …}</c>, or 422 with every error and the old config kept.</item>
/// <item><c>GET /v1/tools</c>: the tool catalogue (as <c>sidecar tools --format json</c>).</item>
/// </list>
/// Answers are JSON; errors are <c>{"error": "…"}</c>.
/// </summary>
internal sealed partial class AdminApi(Gateway gateway, ILogger logger)
{
    private const int MaxBodyBytes = 16 * 1024;
    private static readonly JsonWriterOptions s_json = new() { Indented = false };

    public static bool IsAdminConnection(HttpContext context) => context.Features.Get<AdminConnectionFeature>() is not null;

    public async Task HandleAsync(HttpContext context)
    {
        var request = context.Request;
        if (gateway.Engine.Current.Config.Admin is not { } admin)
        {
            await WriteErrorAsync(context, StatusCodes.Status404NotFound, "the admin API is off").ConfigureAwait(false);
            return;
        }
        if (!Authorized(request, admin.Token))
        {
            gateway.Engine.RecordAuthFailure(null, "admin API: missing or wrong admin token", context.Connection.RemoteIpAddress?.ToString());
            context.Response.Headers.WWWAuthenticate = "Bearer realm=\"sidecar-admin\"";
            await WriteErrorAsync(context, StatusCodes.Status401Unauthorized, "Unauthorized: the admin API needs Authorization: Bearer <admin.token>").ConfigureAwait(false);
            return;
        }

        var path = request.Path.Value ?? "";
        var segments = path.Split('/', StringSplitOptions.RemoveEmptyEntries);
        switch (segments)
        {
            case ["v1", "approvals"]:
                if (!HttpMethods.IsGet(request.Method))
                {
                    await MethodNotAllowedAsync(context, "GET").ConfigureAwait(false);
                    return;
                }
                await ListAsync(context).ConfigureAwait(false);
                return;
            case ["v1", "approvals", var id, var verb and ("approve" or "deny")]:
                if (!HttpMethods.IsPost(request.Method))
                {
                    await MethodNotAllowedAsync(context, "POST").ConfigureAwait(false);
                    return;
                }
                await DecideAsync(context, id, verb == "approve").ConfigureAwait(false);
                return;
            case ["v1", "reload"]:
                if (!HttpMethods.IsPost(request.Method))
                {
                    await MethodNotAllowedAsync(context, "POST").ConfigureAwait(false);
                    return;
                }
                await ReloadAsync(context).ConfigureAwait(false);
                return;
            case ["metrics"] when HttpMethods.IsGet(request.Method):
                await GatewayHost.WriteMetricsAsync(context, gateway).ConfigureAwait(false);
                return;
            case ["v1", "tools"]:
                if (!HttpMethods.IsGet(request.Method))
                {
                    await MethodNotAllowedAsync(context, "GET").ConfigureAwait(false);
                    return;
                }
                await ToolsAsync(context).ConfigureAwait(false);
                return;
            default:
                await WriteErrorAsync(context, StatusCodes.Status404NotFound,
                    $"Not Found: {path} (the admin API has /v1/approvals, /v1/approvals/ID/approve, /v1/approvals/ID/deny, /v1/reload, /v1/tools)").ConfigureAwait(false);
                return;
        }
    }

    /// <summary>
    /// <c>GET /v1/tools</c>: the catalogue, as <c>sidecar tools --format json</c> prints it: every server of the live
    /// config asked for its tools (each through a session of its own, all at once), under the server's own policy.
    /// </summary>
    private async Task ToolsAsync(HttpContext context)
    {
        var servers = gateway.Engine.Current.Servers.Values.ToList();
        var catalogues = await Task.WhenAll(servers.Select(server =>
            ToolCatalogue.ListAsync(server.Config, server.Policy, TimeSpan.FromSeconds(60), context.RequestAborted))).ConfigureAwait(false);
        await WriteJsonAsync(context, StatusCodes.Status200OK, json => ToolCatalogue.WriteJson(json, catalogues)).ConfigureAwait(false);
    }

    /// <summary>Constant time in the token's content and length: both sides are hashed first.</summary>
    private static bool Authorized(HttpRequest request, string token)
    {
        var header = request.Headers.Authorization;
        if (header.Count != 1 || header[0] is not { } value || !value.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase))
        {
            return false;
        }
        Span<byte> given = stackalloc byte[32];
        Span<byte> expected = stackalloc byte[32];
        SHA256.HashData(Encoding.UTF8.GetBytes(value.AsSpan(7).Trim().ToString()), given);
        SHA256.HashData(Encoding.UTF8.GetBytes(token), expected);
        return CryptographicOperations.FixedTimeEquals(given, expected);
    }

    private async Task ListAsync(HttpContext context)
    {
        var status = context.Request.Query["status"];
        var all = status.Count == 1 && status[0] == "all";
        if (status.Count > 0 && !all && !(status.Count == 1 && status[0] == "pending"))
        {
            await WriteErrorAsync(context, StatusCodes.Status400BadRequest, "Bad Request: status must be \"pending\" (the default) or \"all\"").ConfigureAwait(false);
            return;
        }
        var approvals = gateway.Engine.Approvals.List(all);
        await WriteJsonAsync(context, StatusCodes.Status200OK, json =>
        {
            json.WriteStartObject();
            json.WriteStartArray("approvals"u8);
            foreach (var approval in approvals)
            {
                ApprovalBook.WriteJson(json, approval);
            }
            json.WriteEndArray();
            json.WriteEndObject();
        }).ConfigureAwait(false);
    }

    private async Task DecideAsync(HttpContext context, string id, bool approve)
    {
        var (ok, reason, by, error) = await ReadDecisionAsync(context).ConfigureAwait(false);
        if (!ok)
        {
            await WriteErrorAsync(context, StatusCodes.Status400BadRequest, "Bad Request: " + error).ConfigureAwait(false);
            return;
        }
        var book = gateway.Engine.Approvals;
        book.Sweep(); // an approval past its time is expired, not decided now
        switch (book.Decide(id, approve, by, reason, out var approval, out var decided))
        {
            case ApprovalDecision.NotFound:
                await WriteErrorAsync(context, StatusCodes.Status404NotFound,
                    $"Not Found: no approval {id} (pending approvals live in memory: a restart forgets them)").ConfigureAwait(false);
                return;
            case ApprovalDecision.Conflict:
                await WriteJsonAsync(context, StatusCodes.Status409Conflict, json =>
                {
                    json.WriteStartObject();
                    json.WriteString("error"u8, $"Conflict: approval {id} is {approval!.Status.ToWireName()} already");
                    json.WritePropertyName("approval"u8);
                    json.WriteRawValue(decided!, skipInputValidation: true);
                    json.WriteEndObject();
                }).ConfigureAwait(false);
                return;
            default:
                Log.Decided(logger, id, approve ? "approved" : "denied", context.Connection.RemoteIpAddress?.ToString() ?? "");
                await WriteJsonAsync(context, StatusCodes.Status200OK, json => json.WriteRawValue(decided!, skipInputValidation: true)).ConfigureAwait(false);
                return;
        }
    }

    /// <summary>The optional body of approve and deny: <c>{"reason": "…", "by": "…"}</c> (strings; nothing else).</summary>
    private static async Task<(bool Ok, string? Reason, string? By, string? Error)> ReadDecisionAsync(HttpContext context)
    {
        var body = await ReadBodyAsync(context).ConfigureAwait(false);
        if (body is null)
        {
            return (false, null, null, $"the body is over {MaxBodyBytes} bytes");
        }
        if (body.Length == 0 || body.AsSpan().Trim(" \t\r\n"u8).IsEmpty)
        {
            return (true, null, null, null);
        }
        string? reason = null;
        string? by = null;
        try
        {
            var reader = new Utf8JsonReader(body);
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                return (false, null, null, "the body must be a JSON object such as {\"reason\": \"…\"}");
            }
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                var name = reader.GetString();
                reader.Read();
                if (name is not ("reason" or "by"))
                {
                    return (false, null, null, $"unknown field \"{name}\" (expected \"reason\" and \"by\")");
                }
                if (reader.TokenType != JsonTokenType.String)
                {
                    return (false, null, null, $"\"{name}\" must be a string");
                }
                var value = reader.GetString();
                if (value is { Length: > 1000 })
                {
                    return (false, null, null, $"\"{name}\" is over 1000 characters");
                }
                if (name == "reason")
                {
                    reason = value;
                }
                else
                {
                    by = value;
                }
            }
            if (reader.TokenType != JsonTokenType.EndObject || reader.Read())
            {
                return (false, null, null, "the body must be one JSON object");
            }
        }
        catch (JsonException ex)
        {
            return (false, null, null, "the body is not valid JSON: " + ex.Message);
        }
        return (true, reason, by, null);
    }

    private async Task ReloadAsync(HttpContext context)
    {
        if (gateway.Reloader is not { } reloader)
        {
            await WriteErrorAsync(context, StatusCodes.Status409Conflict, "Conflict: this gateway runs the embedded default config, which has no file to reload").ConfigureAwait(false);
            return;
        }
        var result = await reloader.ReloadAsync(ReloadTrigger.Api, context.RequestAborted).ConfigureAwait(false);
        var applied = result.Status != ReloadStatus.Failed;
        await WriteJsonAsync(context, applied ? StatusCodes.Status200OK : StatusCodes.Status422UnprocessableEntity, json =>
        {
            json.WriteStartObject();
            json.WriteBoolean("applied"u8, applied);
            json.WriteString("result"u8, ReloadResult.Name(result.Status));
            json.WriteNumber("version"u8, result.Version);
            if (applied)
            {
                WriteNames(json, "serversAdded"u8, result.ServersAdded);
                WriteNames(json, "serversRemoved"u8, result.ServersRemoved);
                WriteNames(json, "serversChanged"u8, result.ServersChanged);
                WriteNames(json, "policiesChanged"u8, result.PoliciesChanged);
            }
            else
            {
                json.WriteStartArray("errors"u8);
                foreach (var error in result.Errors)
                {
                    json.WriteStartObject();
                    json.WriteString("file"u8, error.File);
                    json.WriteNumber("line"u8, error.Location.Line);
                    json.WriteNumber("column"u8, error.Location.Column);
                    json.WriteString("path"u8, error.Path);
                    json.WriteString("message"u8, error.Message);
                    json.WriteEndObject();
                }
                json.WriteEndArray();
            }
            json.WriteEndObject();
        }).ConfigureAwait(false);
    }

    private static void WriteNames(Utf8JsonWriter json, ReadOnlySpan<byte> name, IReadOnlyList<string> names)
    {
        json.WriteStartArray(name);
        foreach (var item in names)
        {
            json.WriteStringValue(item);
        }
        json.WriteEndArray();
    }

    /// <summary>The request body, or null when it is over <see cref="MaxBodyBytes"/>.</summary>
    private static async Task<byte[]?> ReadBodyAsync(HttpContext context)
    {
        var reader = context.Request.BodyReader;
        while (true)
        {
            var read = await reader.ReadAsync(context.RequestAborted).ConfigureAwait(false);
            if (read.Buffer.Length > MaxBodyBytes)
            {
                reader.AdvanceTo(read.Buffer.Start, read.Buffer.End);
                return null;
            }
            if (read.IsCompleted)
            {
                var bytes = read.Buffer.ToArray();
                reader.AdvanceTo(read.Buffer.End);
                return bytes;
            }
            reader.AdvanceTo(read.Buffer.Start, read.Buffer.End);
        }
    }

    private static Task MethodNotAllowedAsync(HttpContext context, string allow)
    {
        context.Response.Headers.Allow = allow;
        return WriteErrorAsync(context, StatusCodes.Status405MethodNotAllowed, $"Method Not Allowed: use {allow}");
    }

    private static Task WriteErrorAsync(HttpContext context, int status, string message) => WriteJsonAsync(context, status, json =>
    {
        json.WriteStartObject();
        json.WriteString("error"u8, message);
        json.WriteEndObject();
    });

    private static async Task WriteJsonAsync(HttpContext context, int status, Action<Utf8JsonWriter> write)
    {
        var buffer = new ArrayBufferWriter<byte>(1024);
        using (var json = new Utf8JsonWriter(buffer, s_json))
        {
            write(json);
        }
        context.Response.StatusCode = status;
        context.Response.ContentType = "application/json";
        context.Response.ContentLength = buffer.WrittenCount;
        await context.Response.BodyWriter.WriteAsync(buffer.WrittenMemory, context.RequestAborted).ConfigureAwait(false);
    }

    private static partial class Log
    {
        [LoggerMessage(Level = LogLevel.Information, Message = "Admin API: approval {Id} {Verb} (from {Remote})")]
        public static partial void Decided(ILogger logger, string id, string verb, string remote);
    }
}
