using System.Text;
using System.Text.Json;

namespace Sidecar.Configuration;

/// <summary>A position in a source file, 1-based.</summary>
public readonly record struct SourceLocation(int Line, int Column)
{
    public override string ToString() => $"{Line}:{Column}";
}

public enum ConfigNodeKind : byte { Object, Array, String, Number, True, False, Null }

/// <summary>
/// A JSON value read from a user's file, with its JSON path and source location, so that every
/// validation error can say where it is. Config files only: the request path never builds these.
/// </summary>
public abstract class ConfigNode
{
    private protected ConfigNode(ConfigNodeKind kind, string path, SourceLocation location)
    {
        Kind = kind;
        Path = path;
        Location = location;
    }

    public ConfigNodeKind Kind { get; }

    /// <summary>JSONPath-style location of this value, e.g. <c>$.tools.start_proxy.limits[0]</c>.</summary>
    public string Path { get; }

    public SourceLocation Location { get; }

    public string KindName => Kind switch
    {
        ConfigNodeKind.Object => "an object",
        ConfigNodeKind.Array => "an array",
        ConfigNodeKind.String => "a string",
        ConfigNodeKind.Number => "a number",
        ConfigNodeKind.True or ConfigNodeKind.False => "a boolean",
        _ => "null",
    };
}

public sealed class ConfigObject : ConfigNode
{
    internal ConfigObject(string path, SourceLocation location) : base(ConfigNodeKind.Object, path, location) { }

    public List<ConfigMember> Members { get; } = [];

    public ConfigNode? this[string name]
    {
        get
        {
            foreach (var m in Members)
            {
                if (m.Name == name)
                {
                    return m.Value;
                }
            }
            return null;
        }
    }
}

public sealed record ConfigMember(string Name, SourceLocation NameLocation, ConfigNode Value);

public sealed class ConfigArray : ConfigNode
{
    internal ConfigArray(string path, SourceLocation location) : base(ConfigNodeKind.Array, path, location) { }

    public List<ConfigNode> Items { get; } = [];
}

public sealed class ConfigScalar : ConfigNode
{
    internal ConfigScalar(ConfigNodeKind kind, string path, SourceLocation location, string? text)
        : base(kind, path, location) => Text = text;

    /// <summary>The unescaped string value, or a number's literal text; null for booleans and null.</summary>
    public string? Text { get; }

    public bool IsString => Kind == ConfigNodeKind.String;
    public bool IsNumber => Kind == ConfigNodeKind.Number;
    public bool IsBoolean => Kind is ConfigNodeKind.True or ConfigNodeKind.False;
}

/// <summary>
/// Parses JSON into <see cref="ConfigNode"/>s. Strict: no comments, no trailing commas, no duplicate keys.
/// </summary>
public static class ConfigJsonParser
{
    private const int MaxDepth = 64;

    public static ConfigNode? Parse(ReadOnlySpan<byte> utf8, DiagnosticBag diagnostics)
    {
        // Skip a UTF-8 BOM: editors write one and it carries no meaning.
        if (utf8.StartsWith("\uFEFF"u8))
        {
            utf8 = utf8[3..];
        }

        if (utf8.Trim(" \t\r\n"u8).IsEmpty)
        {
            diagnostics.Add("$", new SourceLocation(1, 1), "the file is empty; expected a JSON object");
            return null;
        }

        var lines = new LineMap(utf8);
        var reader = new Utf8JsonReader(utf8, new JsonReaderOptions { MaxDepth = MaxDepth + 1 });
        try
        {
            if (!reader.Read())
            {
                diagnostics.Add("$", new SourceLocation(1, 1), "the file is empty; expected a JSON object");
                return null;
            }
            var root = ReadValue(ref reader, "$", lines, diagnostics, 1);
            if (reader.Read())
            {
                diagnostics.Add("$", lines.Locate(reader.TokenStartIndex), "unexpected content after the end of the document");
            }
            return root;
        }
        catch (JsonException ex)
        {
            var line = (int)(ex.LineNumber ?? 0) + 1;
            var col = (int)(ex.BytePositionInLine ?? 0) + 1;
            diagnostics.Add("$", new SourceLocation(line, col), "invalid JSON: " + StripPosition(ex.Message));
            return null;
        }
        catch (InvalidOperationException ex)
        {
            diagnostics.Add("$", lines.Locate(reader.TokenStartIndex), "invalid JSON: " + ex.Message);
            return null;
        }
    }

    private static string StripPosition(string message)
    {
        var i = message.IndexOf(" LineNumber:", StringComparison.Ordinal);
        message = i > 0 ? message[..i].TrimEnd() : message;
        return message.Replace(" Change the reader options.", "", StringComparison.Ordinal);
    }

    private static ConfigNode ReadValue(ref Utf8JsonReader reader, string path, LineMap lines, DiagnosticBag diagnostics, int depth)
    {
        var location = lines.Locate(reader.TokenStartIndex);
        switch (reader.TokenType)
        {
            case JsonTokenType.StartObject:
            {
                if (depth > MaxDepth)
                {
                    throw new JsonException($"nesting deeper than {MaxDepth} levels", null, location.Line - 1, location.Column - 1);
                }
                var obj = new ConfigObject(path, location);
                HashSet<string>? seen = null;
                while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
                {
                    var nameLocation = lines.Locate(reader.TokenStartIndex);
                    var name = reader.GetString()!;
                    seen ??= new HashSet<string>(StringComparer.Ordinal);
                    var childPath = AppendMember(path, name);
                    reader.Read();
                    var value = ReadValue(ref reader, childPath, lines, diagnostics, depth + 1);
                    if (!seen.Add(name))
                    {
                        diagnostics.Add(childPath, nameLocation, $"duplicate key \"{name}\"");
                        continue;
                    }
                    obj.Members.Add(new ConfigMember(name, nameLocation, value));
                }
                return obj;
            }
            case JsonTokenType.StartArray:
            {
                if (depth > MaxDepth)
                {
                    throw new JsonException($"nesting deeper than {MaxDepth} levels", null, location.Line - 1, location.Column - 1);
                }
                var arr = new ConfigArray(path, location);
                while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                {
                    arr.Items.Add(ReadValue(ref reader, $"{path}[{arr.Items.Count}]", lines, diagnostics, depth + 1));
                }
                return arr;
            }
            case JsonTokenType.String:
                return new ConfigScalar(ConfigNodeKind.String, path, location, reader.GetString());
            case JsonTokenType.Number:
                return new ConfigScalar(ConfigNodeKind.Number, path, location, Encoding.UTF8.GetString(reader.ValueSpan));
            case JsonTokenType.True:
                return new ConfigScalar(ConfigNodeKind.True, path, location, null);
            case JsonTokenType.False:
                return new ConfigScalar(ConfigNodeKind.False, path, location, null);
            default:
                return new ConfigScalar(ConfigNodeKind.Null, path, location, null);
        }
    }

    /// <summary>Appends a member name to a JSON path: <c>$.tools.start_proxy</c>, or <c>$.tools["a.b"]</c> when needed.</summary>
    public static string AppendMember(string path, string name)
    {
        foreach (var c in name)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '_' or '-'))
            {
                return $"{path}[\"{name.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\"", "\\\"", StringComparison.Ordinal)}\"]";
            }
        }
        return name.Length == 0 ? path + "[\"\"]" : path + "." + name;
    }

    /// <summary>Maps byte offsets to 1-based line and column (columns count characters, not bytes).</summary>
    private sealed class LineMap
    {
        private readonly List<int> _lineStarts = [0];
        private readonly byte[] _text;

        public LineMap(ReadOnlySpan<byte> text)
        {
            _text = text.ToArray();
            for (var i = 0; i < text.Length; i++)
            {
                if (text[i] == (byte)'\n')
                {
                    _lineStarts.Add(i + 1);
                }
            }
        }

        public SourceLocation Locate(long offset)
        {
            var index = _lineStarts.BinarySearch((int)offset);
            if (index < 0)
            {
                index = ~index - 1;
            }
            var start = _lineStarts[index];
            var column = Encoding.UTF8.GetCharCount(_text.AsSpan(start, (int)offset - start)) + 1;
            return new SourceLocation(index + 1, column);
        }
    }
}
