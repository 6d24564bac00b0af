using System.Text.Json;
using Sidecar.Audit;
using Sidecar.Decisions;
using Sidecar.JsonRpc;
using Sidecar.Policy;
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
            if (scan.Kind == JsonRpcMessageKind.ErrorResponse && pending.TakeCharges() is { } charges)
            {
                engine.Decisions.Refund(charges);
            }
            ticket = Complete(engine, pending.AuditId, payload, scan);
        }
        return Reshape(engine, server, pending.ToolListPolicy, pending.ToolListPins, pending.RawId, payload, scan);
    }

    /// <summary>Records how a forwarded call ended, from its upstream answer; returns the ticket its answer waits for.</summary>
    public static long Complete(SessionEngine engine, long auditId, ReadOnlyMemory<byte> payload, in JsonRpcScan scan)
    {
        var outcome = AuditResponses.Classify(payload.Span, scan.Kind, out var errorCode);
        return engine.Audit.RecordCompletion(auditId, outcome, errorCode);
    }

    /// <summary>
    /// The upstream answer as the agent gets it: a <c>tools/list</c> result filtered through <paramref name="toolListPolicy"/>
    /// and checked against <paramref name="pins"/> (when given), and the agent's own id token <paramref name="rawId"/>
    /// in place of the upstream's. A pinned tool newly seen with another definition is logged and audited
    /// (<c>tool_pin_mismatch</c>).
    /// </summary>
    public static ReadOnlyMemory<byte> Reshape(SessionEngine engine, string server, PolicyModel? toolListPolicy, ServerPins? pins, ReadOnlySpan<byte> rawId,
        ReadOnlyMemory<byte> payload, in JsonRpcScan scan)
    {
        var span = payload.Span;
        if (toolListPolicy is not null && scan.Kind == JsonRpcMessageKind.Response)
        {
            try
            {
                if (ToolListFilter.Filter(payload, toolListPolicy, pins ?? ServerPins.None, rawId, out var removed, out var mismatches) is { } filtered)
                {
                    if (mismatches is not null)
                    {
                        foreach (var mismatch in mismatches)
                        {
                            ReportPinMismatch(engine, server, mismatch);
                        }
                    }
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
                return JsonRpcResponses.Error(rawId, ErrorCodes.InternalError, SessionMessages.UncheckableToolList);
            }
        }
        return span.Slice(scan.Id.Start, scan.Id.Length).SequenceEqual(rawId)
            ? payload
            : JsonRpcResponses.ReplaceId(span, scan.Id.Start, scan.Id.Length, rawId);
    }

    /// <summary>
    /// A pinned tool's definition no longer matches its pin: one warning and one <c>tool_pin_mismatch</c> audit event
    /// (<c>server</c>, <c>tool</c>, <c>pinned</c>, <c>observed</c>), once per change.
    /// </summary>
    private static void ReportPinMismatch(SessionEngine engine, string server, PinMismatch mismatch)
    {
        engine.Log.PinMismatch(server, mismatch.Tool, mismatch.Pinned, mismatch.Observed);
        engine.Audit.Notify(new AuditNotice("tool_pin_mismatch", json =>
        {
            json.WriteString("server"u8, server);
            json.WriteString("tool"u8, mismatch.Tool);
            json.WriteString("pinned"u8, mismatch.Pinned);
            json.WriteString("observed"u8, mismatch.Observed);
        }));
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
