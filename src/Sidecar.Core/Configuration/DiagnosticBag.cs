namespace Sidecar.Configuration;

/// <summary>One validation error: where it is (file, JSON path, line and column) and what is wrong.</summary>
public sealed record Diagnostic(string? File, string Path, SourceLocation Location, string Message)
{
    /// <summary><c>policies/x.json:12:5: $.tools.x.window: message</c> — the shape compilers and editors understand.</summary>
    public override string ToString()
        => $"{(File is null ? "" : File + ":")}{Location.Line}:{Location.Column}: {Path}: {Message}";
}

/// <summary>Collects every error of a file before anything is applied.</summary>
public sealed class DiagnosticBag
{
    private readonly List<Diagnostic> _items = [];

    public DiagnosticBag(string? file = null) => File = file;

    public string? File { get; }

    public IReadOnlyList<Diagnostic> Items => _items;

    public bool HasErrors => _items.Count > 0;

    public void Add(string path, SourceLocation location, string message)
        => _items.Add(new Diagnostic(File, path, location, message));

    public void Add(ConfigNode node, string message) => Add(node.Path, node.Location, message);

    /// <summary>Reads a whole file; on failure records why (as an error of this file) and returns null.</summary>
    public byte[]? ReadFile(string path, string what)
    {
        try
        {
            return System.IO.File.ReadAllBytes(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            Add("$", new SourceLocation(1, 1), $"cannot read {what} file: {ex.Message}");
            return null;
        }
    }

    public override string ToString() => string.Join(Environment.NewLine, _items);
}

/// <summary>Thrown by loaders when a file has errors; carries all of them.</summary>
public sealed class ConfigValidationException(IReadOnlyList<Diagnostic> diagnostics)
    : Exception(FormatMessage(diagnostics))
{
    public IReadOnlyList<Diagnostic> Diagnostics { get; } = diagnostics;

    private static string FormatMessage(IReadOnlyList<Diagnostic> diagnostics)
        => diagnostics.Count == 1
            ? diagnostics[0].ToString()
            : $"{diagnostics.Count} errors:{Environment.NewLine}{string.Join(Environment.NewLine, diagnostics)}";
}
