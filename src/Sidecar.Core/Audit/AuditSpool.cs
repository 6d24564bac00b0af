using System.Globalization;

namespace Sidecar.Audit;

/// <summary>One spooled batch: a file holding exactly the batch's JSON lines.</summary>
/// <param name="Ordinal">Position in the spool: files are delivered in ordinal order.</param>
/// <param name="Bytes">The file's length, counted against the spool limit.</param>
internal sealed record SpoolEntry(long Ordinal, long FirstSequence, long LastSequence, long Bytes, string Path)
{
    /// <summary>The number of events (sequences in a batch are consecutive).</summary>
    public long Count => LastSequence - FirstSequence + 1;

    public string FileName => System.IO.Path.GetFileName(Path);
}

/// <summary>
/// A directory of batches waiting for delivery, one file per batch, named
/// <c>{ordinal:D19}.{first}-{last}.ndjson</c> so that a directory listing sorts oldest first and an operator can read
/// or replay them with ordinary tools (each file is the batch's JSON lines, nothing else).
/// </summary>
/// <remarks>
/// <para>
/// The ordinal, not the sequence, orders the files: it is assigned when the sink accepts a batch and continues after
/// the highest ordinal found at start, so files left by a previous run always come first even if the pipeline's
/// sequence numbers restarted.
/// </para>
/// <para>
/// A batch is written to <c>NAME.tmp</c>, flushed to the device, then renamed: a crash leaves at worst a
/// <c>.tmp</c> file, never a half batch under a final name. Leftover <c>.tmp</c> files are deleted at start (their
/// batch was never reported as kept).
/// </para>
/// <para>
/// The directory is locked (an exclusive lock on <c>.lock</c>) for the spool's lifetime: two sinks sharing one spool
/// would deliver each other's files twice and race on deletes.
/// </para>
/// </remarks>
internal sealed class AuditSpool : IDisposable
{
    public const string Extension = ".ndjson";
    private const string TempExtension = ".tmp";
    private const string LockFileName = ".lock";

    private readonly FileStream _lock;

    /// <summary>Opens (creating it if needed) and locks a spool directory, and lists the batches already in it.</summary>
    /// <exception cref="AuditSinkException">The directory cannot be created or read, or another sink holds it.</exception>
    public AuditSpool(string directory)
    {
        Directory = Path.GetFullPath(directory);
        try
        {
            System.IO.Directory.CreateDirectory(Directory);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new AuditSinkException($"cannot create the audit spool directory {Directory}: {ex.Message}", ex);
        }
        try
        {
            _lock = new FileStream(Path.Combine(Directory, LockFileName), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new AuditSinkException($"cannot lock the audit spool directory {Directory} (is another sidecar using it?): {ex.Message}", ex);
        }
        try
        {
            Recovered = Scan(out var ignored);
            Ignored = ignored;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            _lock.Dispose();
            throw new AuditSinkException($"cannot read the audit spool directory {Directory}: {ex.Message}", ex);
        }
    }

    /// <summary>The full path of the directory.</summary>
    public string Directory { get; }

    /// <summary>The batches found at start, oldest first.</summary>
    public IReadOnlyList<SpoolEntry> Recovered { get; }

    /// <summary>Files found at start that are not spooled batches (left alone, reported once).</summary>
    public IReadOnlyList<string> Ignored { get; }

    /// <summary>Writes one batch durably (temp file, flush to device, rename).</summary>
    /// <exception cref="IOException">The disk write failed; no file is left under the final name.</exception>
    /// <exception cref="UnauthorizedAccessException">The directory is not writable.</exception>
    public SpoolEntry Write(long ordinal, long firstSequence, long lastSequence, ReadOnlySpan<byte> lines)
    {
        var name = string.Create(CultureInfo.InvariantCulture, $"{ordinal:D19}.{firstSequence}-{lastSequence}{Extension}");
        var path = Path.Combine(Directory, name);
        var temp = path + TempExtension;
        try
        {
            using (var file = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None, bufferSize: 0))
            {
                file.Write(lines);
                file.Flush(flushToDisk: true);
            }
            File.Move(temp, path, overwrite: false);
        }
        catch
        {
            TryDelete(temp);
            throw;
        }
        return new SpoolEntry(ordinal, firstSequence, lastSequence, lines.Length, path);
    }

    /// <summary>Reads a spooled batch whole (batches are small: one POST body).</summary>
    public Task<byte[]> ReadAsync(SpoolEntry entry, CancellationToken cancellationToken) =>
        File.ReadAllBytesAsync(entry.Path, cancellationToken);

    /// <summary>Deletes a delivered batch.</summary>
    public static void Delete(SpoolEntry entry) => File.Delete(entry.Path);

    public void Dispose() => _lock.Dispose();

    private List<SpoolEntry> Scan(out List<string> ignored)
    {
        var entries = new List<SpoolEntry>();
        ignored = [];
        foreach (var path in System.IO.Directory.EnumerateFiles(Directory))
        {
            var name = Path.GetFileName(path);
            if (name == LockFileName)
            {
                continue;
            }
            if (name.EndsWith(TempExtension, StringComparison.Ordinal))
            {
                TryDelete(path);
                continue;
            }
            if (TryParse(name, out var ordinal, out var first, out var last))
            {
                entries.Add(new SpoolEntry(ordinal, first, last, new FileInfo(path).Length, path));
            }
            else
            {
                ignored.Add(name);
            }
        }
        entries.Sort(static (a, b) => a.Ordinal.CompareTo(b.Ordinal));
        return entries;
    }

    /// <summary>Parses <c>{ordinal}.{first}-{last}.ndjson</c>.</summary>
    internal static bool TryParse(string name, out long ordinal, out long first, out long last)
    {
        ordinal = first = last = 0;
        if (!name.EndsWith(Extension, StringComparison.Ordinal))
        {
            return false;
        }
        var stem = name.AsSpan(0, name.Length - Extension.Length);
        var dot = stem.IndexOf('.');
        if (dot <= 0)
        {
            return false;
        }
        var range = stem[(dot + 1)..];
        var dash = range.IndexOf('-');
        return dash > 0
            && long.TryParse(stem[..dot], NumberStyles.None, CultureInfo.InvariantCulture, out ordinal)
            && long.TryParse(range[..dash], NumberStyles.None, CultureInfo.InvariantCulture, out first)
            && long.TryParse(range[(dash + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out last)
            && last >= first;
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // A temp file that cannot be deleted is harmless: it is never delivered, and the next start tries again.
        }
    }
}
