using System.Text.Json;
using Sidecar.JsonRpc;

namespace Sidecar.Audit;

/// <summary>Reads how an upstream answered a <c>tools/call</c>, for the audit event: one forward pass, nothing allocated.</summary>
public static class AuditResponses
{
    /// <summary>
    /// <see cref="AuditOutcome.Ok"/>, <see cref="AuditOutcome.ToolError"/> (<c>result.isError: true</c>) or
    /// <see cref="AuditOutcome.Error"/> with <c>error.code</c> in <paramref name="errorCode"/>.
    /// </summary>
    public static AuditOutcome Classify(ReadOnlySpan<byte> response, JsonRpcMessageKind kind, out int errorCode)
    {
        errorCode = 0;
        var member = kind == JsonRpcMessageKind.ErrorResponse ? "error"u8 : "result"u8;
        var field = kind == JsonRpcMessageKind.ErrorResponse ? "code"u8 : "isError"u8;
        var reader = new Utf8JsonReader(response);
        try
        {
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                return AuditOutcome.Unknown;
            }
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                var isMember = reader.ValueTextEquals(member);
                reader.Read();
                if (!isMember || reader.TokenType != JsonTokenType.StartObject)
                {
                    reader.Skip();
                    continue;
                }
                while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
                {
                    var isField = reader.ValueTextEquals(field);
                    reader.Read();
                    if (isField)
                    {
                        if (kind == JsonRpcMessageKind.ErrorResponse)
                        {
                            reader.TryGetInt32(out errorCode);
                            return AuditOutcome.Error;
                        }
                        return reader.TokenType == JsonTokenType.True ? AuditOutcome.ToolError : AuditOutcome.Ok;
                    }
                    reader.Skip();
                }
                break;
            }
        }
        catch (JsonException)
        {
            return AuditOutcome.Unknown;
        }
        return kind == JsonRpcMessageKind.ErrorResponse ? AuditOutcome.Error : AuditOutcome.Ok;
    }
}
