using System.Buffers;
using System.Text.Json;
using Sidecar.Policy;

namespace Sidecar.Sessions;

/// <summary>
/// Removes hidden and denied tools from a <c>tools/list</c> response before it reaches the agent. Everything else
/// (pagination cursor, <c>_meta</c>, unknown fields) is kept as the server sent it. A tool entry without a string
/// name is dropped: what the gateway can't name, the agent doesn't see.
/// </summary>
internal static class ToolListFilter
{
    /// <summary>Returns the filtered response with the agent's id; null when the message has no <c>result.tools</c> array (passed through unchanged).</summary>
    public static byte[]? Filter(ReadOnlyMemory<byte> response, PolicyModel policy, ReadOnlySpan<byte> rawId, out int removed)
    {
        removed = 0;
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
                                && policy.IsVisible(name.GetString()!))
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
}
