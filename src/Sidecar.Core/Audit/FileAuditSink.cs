using Microsoft.Extensions.Logging;
using Sidecar.Configuration;

namespace Sidecar.Audit;

/// <summary>
/// The trail as a JSONL file. Each batch is appended and flushed to the OS before the next; at <c>maxBytes</c> the
/// file is rotated (at a batch boundary) to <c>NAME.FIRST-LAST.jsonl</c> (the sequence numbers it holds) and the
/// oldest rotated files beyond <c>maxFiles</c> are deleted. The file is held open exclusively for writing, so two
/// gateways can't interleave one chain. On open, the last event's sequence and hash are read so the chain continues
/// across restarts; an unterminated last line (a crash mid-write) is cut off and reported in <c>audit_start</c>, and
/// a last event that is not <c>audit_stop</c> (the previous run never shut down) makes the head an unclean stop.
/// </summary>
public sealed class FileAuditSink : IAuditSink
{
    private readonly AuditFileConfig _config;
    private readonly ILogger _logger;
    private readonly FileStream _lock;
    private FileStream _stream;
    private long _fileFirst;
    private long _fileLast;

    public FileAuditSink(AuditFileConfig config, ILogger logger)
    {
        _config = config;
        _logger = logger;
        var directory = System.IO.Path.GetDirectoryName(config.Path)!;
        try
        {
            Directory.CreateDirectory(directory);
            // An exclusive lock on a side file, so readers (tail, sidecar audit verify) can open the trail itself.
            _lock = new FileStream(config.Path + ".lock", FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            _stream = Open(config.Path);
        }
        catch (IOException ex)
        {
            _lock?.Dispose();
            throw new AuditSinkException($"cannot open the audit file {config.Path}: {ex.Message} (is another gateway writing it?)", ex);
        }
        catch (UnauthorizedAccessException ex)
        {
            throw new AuditSinkException($"cannot open the audit file {config.Path}: {ex.Message}", ex);
        }
        try
        {
            Head = ReadHead(_stream, out _fileFirst);
            _fileLast = Head.Sequence;
            if (Head.Sequence == 0 && NewestRotated() is { } rotated)
            {
                using var previous = new FileStream(rotated, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
                var rotatedHead = ReadHead(previous, out _);
                Head = rotatedHead with { RecoveredBytes = Head.RecoveredBytes, UncleanStop = rotatedHead.UncleanStop || Head.UncleanStop };
            }
        }
        catch
        {
            _stream.Dispose();
            _lock.Dispose();
            throw;
        }
    }

    public string Name => "file";

    /// <summary>Where the chain continues: the last event already in the file (or the newest rotated one).</summary>
    public AuditChainHead Head { get; }

    public string Path => _config.Path;

    public ValueTask WriteAsync(AuditBatch batch, CancellationToken cancellationToken)
    {
        if (_stream.Length > 0 && _stream.Length + batch.Lines.Length > _config.MaxBytes)
        {
            Rotate();
        }
        if (_stream.Length == 0)
        {
            _fileFirst = batch.FirstSequence;
        }
        try
        {
            _stream.Write(batch.Lines.Span);
            _stream.Flush();
        }
        catch (IOException ex)
        {
            throw new AuditSinkException($"writing {_config.Path} failed: {ex.Message}", ex);
        }
        _fileLast = batch.LastSequence;
        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        _stream.Flush(flushToDisk: true);
        return ValueTask.CompletedTask;
    }

    public async ValueTask DisposeAsync()
    {
        await _stream.DisposeAsync().ConfigureAwait(false);
        await _lock.DisposeAsync().ConfigureAwait(false);
    }

    private void Rotate()
    {
        var rotated = RotatedName(_fileFirst, _fileLast);
        _stream.Flush(flushToDisk: true);
        _stream.Dispose();
        File.Move(_config.Path, rotated);
        _stream = Open(_config.Path);
        _logger.LogInformation("Rotated the audit file to {File}", rotated);

        var all = Rotated();
        for (var i = 0; i < all.Length - _config.MaxFiles; i++)
        {
            try
            {
                File.Delete(all[i]);
                _logger.LogInformation("Deleted the oldest rotated audit file {File} (maxFiles {Max})", all[i], _config.MaxFiles);
            }
            catch (IOException ex)
            {
                _logger.LogWarning("Could not delete old audit file {File}: {Error}", all[i], ex.Message);
            }
        }
    }

    private string RotatedName(long first, long last)
    {
        var directory = System.IO.Path.GetDirectoryName(_config.Path)!;
        var stem = System.IO.Path.GetFileNameWithoutExtension(_config.Path);
        var extension = System.IO.Path.GetExtension(_config.Path);
        return System.IO.Path.Combine(directory, $"{stem}.{first:D12}-{last:D12}{extension}");
    }

    /// <summary>Rotated files, oldest first (their names sort by sequence).</summary>
    private string[] Rotated()
    {
        var directory = System.IO.Path.GetDirectoryName(_config.Path)!;
        var stem = System.IO.Path.GetFileNameWithoutExtension(_config.Path);
        var extension = System.IO.Path.GetExtension(_config.Path);
        var files = Directory.GetFiles(directory, $"{stem}.????????????-????????????{extension}");
        Array.Sort(files, StringComparer.Ordinal);
        return files;
    }

    private string? NewestRotated()
    {
        var files = Rotated();
        return files.Length == 0 ? null : files[^1];
    }

    private static FileStream Open(string path)
        => new(path, new FileStreamOptions
        {
            Mode = FileMode.OpenOrCreate,
            Access = FileAccess.ReadWrite,
            Share = FileShare.Read,
            BufferSize = 0,
        });

    /// <summary>
    /// Reads the last complete line's <c>seq</c>, <c>hash</c> and <c>type</c>, cuts an unterminated tail, and leaves
    /// the stream positioned at its end for appending. The head is an unclean stop when a tail was cut or the last
    /// event is not <c>audit_stop</c>.
    /// </summary>
    private static AuditChainHead ReadHead(FileStream stream, out long firstSequence)
    {
        firstSequence = 0;
        var length = stream.Length;
        if (length == 0)
        {
            return AuditChainHead.Empty;
        }
        const int MaxTail = 8 * 1024 * 1024;
        var tailLength = (int)Math.Min(length, MaxTail);
        var tail = new byte[tailLength];
        stream.Position = length - tailLength;
        stream.ReadExactly(tail);

        var end = tail.Length;
        long recovered = 0;
        if (tail[^1] != (byte)'\n')
        {
            var lastNewline = Array.LastIndexOf(tail, (byte)'\n');
            end = lastNewline + 1;
            recovered = tail.Length - end;
            if (stream.CanWrite)
            {
                stream.SetLength(length - recovered);
            }
        }
        stream.Position = stream.Length;
        if (end == 0)
        {
            return AuditChainHead.Empty with { RecoveredBytes = recovered, UncleanStop = recovered > 0 };
        }
        var lineStart = Array.LastIndexOf(tail, (byte)'\n', end - 2) + 1;
        var line = tail.AsSpan(lineStart, end - 1 - lineStart);
        if (!TryReadSequenceAndHash(line, out var sequence, out var hash))
        {
            throw new AuditSinkException("the last line of the audit file is not an audit event; move the file away or check it with `sidecar audit verify`");
        }
        if (TryReadFirstSequence(stream, out var first))
        {
            firstSequence = first;
        }
        stream.Position = stream.Length;
        var stopped = AuditChain.TryReadType(line, out var type) && type == "audit_stop";
        return new AuditChainHead(sequence, hash, recovered, UncleanStop: recovered > 0 || !stopped);
    }

    private static bool TryReadFirstSequence(FileStream stream, out long sequence)
    {
        stream.Position = 0;
        var head = new byte[Math.Min(stream.Length, 256)];
        stream.ReadExactly(head);
        return AuditChain.TryReadSequence(head, out sequence);
    }

    /// <summary>Reads <c>seq</c> and the chain hash of one line.</summary>
    internal static bool TryReadSequenceAndHash(ReadOnlySpan<byte> line, out long sequence, out byte[] hash)
    {
        sequence = 0;
        hash = new byte[AuditChain.HashBytes];
        var eventJson = new byte[line.Length];
        if (!AuditChain.TrySplitLine(line, eventJson, out _, hash))
        {
            return false;
        }
        return AuditChain.TryReadSequence(line, out sequence);
    }
}

/// <summary>The trail as JSONL on standard output (logs go to standard error), for a log collector to pick up.</summary>
public sealed class StdoutAuditSink(Stream output) : IAuditSink
{
    public StdoutAuditSink() : this(Console.OpenStandardOutput())
    {
    }

    public string Name => "stdout";

    public ValueTask WriteAsync(AuditBatch batch, CancellationToken cancellationToken)
    {
        output.Write(batch.Lines.Span);
        output.Flush();
        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        output.Flush();
        return ValueTask.CompletedTask;
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
