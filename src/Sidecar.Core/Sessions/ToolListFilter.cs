using System.Buffers;
using System.Text.Json;
using Sidecar.Catalogue;
using Sidecar.Decisions;
using Sidecar.Policy;

namespace Sidecar.Sessions;

/// <summary>
/// Removes hidden and denied tools from a <c>tools/list</c> response before it reaches the agent. Everything else
/// (pagination cursor, <c>_meta</c>, unknown fields) is kept as the server sent it. A tool entry without a string
/// name is dropped: what the gateway can't name, the agent doesn't see.
/// </summary>
/// <remarks>
/// This is where the gateway learns what the server's tools are now: each tool some policy of the server pins is
/// hashed (<see cref="ToolCatalogue.Hash"/>, as <c>sidecar tools</c> does) and recorded in the server's
/// <see cref="PinWatch"/>, and one whose hash differs from the caller's policy's pin is removed too. Pins the list
/// newly contradicts are handed back for the audit trail.
/// </remarks>
internal static class ToolListFilter
{
    /// <summary>Filters through <paramref name="policy"/> alone (no pins).</summary>
    public static byte[]? Filter(ReadOnlyMemory<byte> response, PolicyModel policy, ReadOnlySpan<byte> rawId, out int removed)
        => Filter(response, policy, ServerPins.None, rawId, out removed, out _);

    /// <summary>
    /// Returns the filtered response with the agent's id; null when the message has no <c>result.tools</c> array (passed
    /// through unchanged). <paramref name="mismatches"/>: the pins of the server this list contradicts that had not
    /// been reported yet (null when none).
    /// </summary>
    public static byte[]? Filter(ReadOnlyMemory<byte> response, PolicyModel policy, ServerPins pins, ReadOnlySpan<byte> rawId, out int removed,
        out List<PinMismatch>? mismatches)
    {
        removed = 0;
        mismatches = null;
        using var doc = JsonDocument.Parse(response, new JsonDocumentOptions { AllowDuplicateProperties = false, MaxDepth = 128 });
        var root = doc.RootElement;
        if (!root.TryGetProperty("result"u8, out var result) || result.ValueKind != JsonValueKind.Object
            || !result.TryGetProperty("tools"u8, out var tools) || tools.ValueKind != JsonValueKind.Array)
        {
            return null;
        }

        var buffer = new ArrayBufferWriter<byte>(response.Length);
        using (var writer = new Utf8JsonWriter(buffer, JsonRpcResponses.s_writerOptions))
        {
            writer.WriteStartObject();
            foreach (var property in root.EnumerateObject())
            {
                if (property.NameEquals("id"u8))
                {
                    writer.WritePropertyName("id"u8);
                    writer.WriteRawValue(rawId, skipInputValidation: true);
                }
                else if (property.NameEquals("result"u8))
                {
                    writer.WritePropertyName("result"u8);
                    writer.WriteStartObject();
                    foreach (var member in result.EnumerateObject())
                    {
                        if (!member.NameEquals("tools"u8))
                        {
                            member.WriteTo(writer);
                            continue;
                        }
                        writer.WritePropertyName("tools"u8);
                        writer.WriteStartArray();
                        foreach (var tool in tools.EnumerateArray())
                        {
                            if (tool.ValueKind == JsonValueKind.Object
                                && tool.TryGetProperty("name"u8, out var name) && name.ValueKind == JsonValueKind.String
                                && Visible(tool, name.GetString()!, policy, pins, ref mismatches))
                            {
                                tool.WriteTo(writer);
                            }
                            else
                            {
                                removed++;
                            }
                        }
                        writer.WriteEndArray();
                    }
                    writer.WriteEndObject();
                }
                else
                {
                    property.WriteTo(writer);
                }
            }
            writer.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>Whether the agent sees the tool: not hidden or denied, and (when pinned) still as it was pinned. Records what a pinned tool is now.</summary>
    private static bool Visible(JsonElement tool, string name, PolicyModel policy, ServerPins pins, ref List<PinMismatch>? mismatches)
    {
        var visible = policy.IsVisible(name);
        if (pins.Any && pins.Watched.TryGetValue(name, out var watched))
        {
            var hash = ToolCatalogue.Hash(tool);
            pins.Watch.Observe(name, hash, watched, mismatches ??= []);
            if (policy.TryGetPin(name, out var pin) && !string.Equals(pin, hash, StringComparison.Ordinal))
            {
                visible = false;
            }
        }
        return visible;
    }
}
