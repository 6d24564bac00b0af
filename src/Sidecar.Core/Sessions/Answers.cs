using System.Text.Json;
using Sidecar.Audit;
using Sidecar.JsonRpc;
using Sidecar.Protocol;

namespace Sidecar.Sessions;

/// <summary>
/// What happens to an upstream's answer to a forwarded request before the agent sees it, for sessions and stateless
/// requests alike: a call's completion is recorded (and a failed call's tokens go back), a <c>tools/list</c> result
/// is filtered through the policy, and the agent's own id token is put back.
/// </summary>
internal static class Answers
{
    /// <summary>The answer for the agent, and (in <paramref name="ticket"/>) the audit record it waits for.</summary>
    public static ReadOnlyMemory<byte> Review(SessionEngine engine, string server, PendingRequest pending, ReadOnlyMemory<byte> payload,
        in JsonRpcScan scan, out long ticket)
    {
        ticket = 0;
        if (pending.HasDecision)
        {
            var outcome = AuditResponses.Classify(payload.Span, scan.Kind, out var errorCode);
            if (scan.Kind == JsonRpcMessageKind.ErrorResponse && pending.TakeCharges() is { } charges)
            {
                engine.Decisions.Refund(charges);
            }
            ticket = engine.Audit.RecordCompletion(pending.AuditId, outcome, errorCode);
        }

        var span = payload.Span;
        if (pending.ToolListPolicy is { } policy && scan.Kind == JsonRpcMessageKind.Response)
        {
            try
            {
                if (ToolListFilter.Filter(payload, policy, pending.RawId, out var removed) is { } filtered)
                {
                    if (removed > 0)
                    {
                        engine.Log.ToolsRemoved(removed, server);
                    }
                    return filtered;
                }
            }
            catch (JsonException ex)
            {
                engine.Log.UnfilterableToolList(server, ex.Message);
                return JsonRpcResponses.Error(pending.RawId, ErrorCodes.InternalError, SessionMessages.UncheckableToolList);
            }
        }
        return span.Slice(scan.Id.Start, scan.Id.Length).SequenceEqual(pending.RawId)
            ? payload
            : JsonRpcResponses.ReplaceId(span, scan.Id.Start, scan.Id.Length, pending.RawId);
    }

    /// <summary><c>result.protocolVersion</c> of an <c>initialize</c> result; null when it has none.</summary>
    public static string? ProtocolVersion(ReadOnlySpan<byte> response)
    {
        try
        {
            var reader = new Utf8JsonReader(response, new JsonReaderOptions { MaxDepth = 128 });
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                return null;
            }
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                var isResult = reader.ValueTextEquals("result"u8);
                reader.Read();
                if (!isResult || reader.TokenType != JsonTokenType.StartObject)
                {
                    reader.Skip();
                    continue;
                }
                while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
                {
                    var isVersion = reader.ValueTextEquals("protocolVersion"u8);
                    reader.Read();
                    if (isVersion && reader.TokenType == JsonTokenType.String)
                    {
                        return McpProtocol.Intern(reader.GetString());
                    }
                    reader.Skip();
                }
                return null;
            }
        }
        catch (JsonException)
        {
            // Scanned before: cannot happen; an unreadable result has no version.
        }
        return null;
    }
}
