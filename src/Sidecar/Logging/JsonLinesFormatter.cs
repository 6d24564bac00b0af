using System.Buffers;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using ZLogger;

namespace Sidecar.Logging;

/// <summary>
/// Log entries as JSON lines (<c>logging.format: json</c>, the default): one object per entry,
/// <c>{"time","level","category","eventId"?,"message", …the message's values…, "exception"?}</c>, written with
/// <see cref="Utf8JsonWriter"/>, so every value is escaped (control characters, quotes, and everything outside ASCII as
/// <c>\uXXXX</c>: an entry is one line whatever a tool name or an upstream's stderr holds). The values are the
/// message template's placeholders (<c>Server</c>, <c>Tool</c>, …) under their own names: numbers and booleans as
/// JSON numbers and booleans, anything else as its text. A placeholder whose name is one of the fixed fields is
/// written as <c>arg.NAME</c>. No reflection: nothing is serialized but strings, numbers and booleans.
/// </summary>
internal sealed class JsonLinesFormatter : IZLoggerFormatter
{
    private static readonly JsonWriterOptions s_options = new() { Indented = false, SkipValidation = true };

    [ThreadStatic]
    private static Utf8JsonWriter? t_writer;

    public bool WithLineBreak => true;

    public void FormatLogEntry(IBufferWriter<byte> writer, IZLoggerEntry entry)
    {
        var json = t_writer;
        if (json is null)
        {
            json = t_writer = new Utf8JsonWriter(writer, s_options);
        }
        else
        {
            json.Reset(writer);
        }
        var info = entry.LogInfo;
        json.WriteStartObject();
        json.WriteString("time"u8, info.Timestamp.Utc);
        json.WriteString("level"u8, LevelName(info.LogLevel));
        json.WriteString("category"u8, info.Category.Name);
        if (info.EventId.Id != 0)
        {
            json.WriteNumber("eventId"u8, info.EventId.Id);
        }
        json.WriteString("message"u8, entry.ToString());
        for (var i = 0; i < entry.ParameterCount; i++)
        {
            var key = entry.GetParameterKeyAsString(i).ToString();
            if (key == "{OriginalFormat}")
            {
                continue;
            }
            var name = key is "time" or "level" or "category" or "eventId" or "message" or "exception" ? "arg." + key : key;
            WriteValue(json, name, entry.GetParameterValue(i));
        }
        if (info.Exception is { } exception)
        {
            json.WriteString("exception"u8, exception.ToString());
        }
        json.WriteEndObject();
        json.Flush();
    }

    private static void WriteValue(Utf8JsonWriter json, string name, object? value)
    {
        switch (value)
        {
            case null:
                json.WriteNull(name);
                break;
            case bool b:
                json.WriteBoolean(name, b);
                break;
            case int n:
                json.WriteNumber(name, n);
                break;
            case long n:
                json.WriteNumber(name, n);
                break;
            case double n when double.IsFinite(n):
                json.WriteNumber(name, n);
                break;
            case TimeSpan t:
                json.WriteNumber(name, t.TotalMilliseconds);
                break;
            default:
                json.WriteString(name, value.ToString());
                break;
        }
    }

    private static string LevelName(LogLevel level) => level switch
    {
        LogLevel.Trace => "trace",
        LogLevel.Debug => "debug",
        LogLevel.Information => "information",
        LogLevel.Warning => "warning",
        LogLevel.Error => "error",
        LogLevel.Critical => "critical",
        _ => "none",
    };
}
