using System.Buffers;
using System.Text;

namespace Sidecar.Upstreams;

internal enum SseReadKind : byte
{
    /// <summary>An event with data (anything but whitespace) was dispatched.</summary>
    Event,

    /// <summary>An event (or a line) exceeded the size limit and was discarded.</summary>
    TooLarge,

    /// <summary>The stream ended (an unterminated last event is discarded, as the SSE spec says).</summary>
    End,
}

/// <summary>One dispatched server-sent event. <see cref="Data"/> is a fresh array the caller owns.</summary>
internal readonly record struct SseEvent(SseReadKind Kind, string? Type, byte[]? Data)
{
    /// <summary>True for the default <c>message</c> type (no <c>event:</c> field, or <c>event: message</c>).</summary>
    public bool IsMessage => Type is null or SseReader.MessageType;
}

/// <summary>
/// An incremental <c>text/event-stream</c> parser (WHATWG HTML "server-sent events" interpretation) over a
/// <see cref="Stream"/> (left open), read into one pooled buffer: lines end in CRLF, LF or CR; <c>:</c> starts a comment; <c>data</c> lines are joined
/// with LF; <c>event</c>, <c>id</c> and <c>retry</c> are honoured; a blank line dispatches. Events whose data is empty
/// (or only whitespace: nothing a consumer could use) are not dispatched, but their <c>id</c> and <c>retry</c> count:
/// MCP 2025-11-25 servers prime every stream with such an event (an id, maybe a retry, <c>data:</c> empty) so that the
/// client can resume it. As in the SSE spec, an event's id becomes <see cref="LastEventId"/> only once the event is
/// whole (its blank line read): a stream cut inside an event resumes from the event before it. Memory is bounded: an
/// event whose data exceeds <c>maxEventBytes</c>, or a line longer than that, is skipped without being buffered
/// (reported as <see cref="SseReadKind.TooLarge"/>).
/// </summary>
internal sealed class SseReader : IAsyncDisposable
{
    public const string MessageType = "message";
    public const string EndpointType = "endpoint";

    private const int MaxIdBytes = 1024;
    private const int MaxTypeBytes = 256;

    /// <summary>The first buffer's size; it grows (pooled) only for a line longer than that.</summary>
    private const int InitialBufferSize = 16 * 1024;

    /// <summary>Never read into less free space than this.</summary>
    private const int MinimumReadSize = 4096;

    private Stream _stream;
    private byte[] _buffer;
    private int _start;      // unparsed bytes are _buffer[_start.._end]
    private int _end;
    private bool _streamEnded;
    private readonly int _maxEventBytes;
    private readonly int _maxLineBytes;
    private byte[] _data = [];
    private int _dataLength;
    private bool _dataTooLarge;
    private string? _type;
    private byte[]? _id; // the last event id (of a whole event); allocated on the first id: many streams have none
    private int _idLength = -1;
    private string? _idString;
    private byte[]? _pendingId; // the id field of the event being read, until its blank line commits it
    private int _pendingIdLength = -1; // -1: the event being read has set no id
    private bool _skippingLine;
    private bool _pendingCr;
    private bool _bomChecked;

    public SseReader(Stream stream, int maxEventBytes)
    {
        _stream = stream;
        _buffer = ArrayPool<byte>.Shared.Rent(InitialBufferSize);
        _maxEventBytes = maxEventBytes;
        _maxLineBytes = maxEventBytes + 16; // "data: " and friends
    }

    /// <summary>
    /// Makes a released reader (<see cref="Release"/>) ready for another stream, with nothing of the last one left:
    /// for <see cref="SseReaderPool"/>.
    /// </summary>
    internal void Reset(Stream stream)
    {
        _stream = stream;
        if (_buffer.Length == 0)
        {
            _buffer = ArrayPool<byte>.Shared.Rent(InitialBufferSize);
        }
        _start = _end = 0;
        _streamEnded = false;
        _dataLength = 0;
        _dataTooLarge = false;
        _type = null;
        _idLength = -1;
        _idString = null;
        _pendingIdLength = -1;
        _skippingLine = false;
        _pendingCr = false;
        _bomChecked = false;
        RetryMilliseconds = null;
    }

    /// <summary>
    /// The last event ID the stream set, as of the last whole event (dispatched or not), for <c>Last-Event-ID</c> on
    /// reconnection; null if none (or the stream reset it with an empty <c>id</c>).
    /// </summary>
    public string? LastEventId
    {
        get
        {
            if (_idLength <= 0 || _id is null)
            {
                return null;
            }
            return _idString ??= Encoding.UTF8.GetString(_id, 0, _idLength);
        }
    }

    /// <summary>The reconnection time the stream asked for (<c>retry:</c>), or null.</summary>
    public int? RetryMilliseconds { get; private set; }

    public async ValueTask<SseEvent> ReadAsync(CancellationToken cancellationToken)
    {
        // Parse what is buffered first (a previous read may have brought several events); read only when it is not enough.
        var parseFirst = _end > _start;
        while (true)
        {
            if (parseFirst || _streamEnded)
            {
                var buffer = new ReadOnlySequence<byte>(_buffer, _start, _end - _start);
                var outcome = Parse(ref buffer, _streamEnded);
                _start = _end - (int)buffer.Length; // Parse only ever consumes from the front
                if (outcome.HasValue)
                {
                    return outcome.Value;
                }
                if (_streamEnded)
                {
                    return new SseEvent(SseReadKind.End, null, null);
                }
            }
            MakeRoom();
            var read = await _stream.ReadAsync(_buffer.AsMemory(_end), cancellationToken).ConfigureAwait(false);
            if (read == 0)
            {
                _streamEnded = true;
            }
            _end += read;
            parseFirst = true;
        }
    }

    /// <summary>
    /// Frees at least <see cref="MinimumReadSize"/> bytes after <c>_end</c>: moves the unparsed bytes to the front, and
    /// grows the buffer when they fill most of it (bounded: <see cref="Parse"/> drops a line once it passes the line
    /// limit, so at most about one line's worth is ever kept).
    /// </summary>
    private void MakeRoom()
    {
        var pending = _end - _start;
        if (_start > 0 && _buffer.Length - _end < MinimumReadSize)
        {
            _buffer.AsSpan(_start, pending).CopyTo(_buffer);
            _start = 0;
            _end = pending;
        }
        if (_buffer.Length - _end < MinimumReadSize)
        {
            var grown = ArrayPool<byte>.Shared.Rent(Math.Max(_buffer.Length * 2, pending + MinimumReadSize));
            _buffer.AsSpan(_start, pending).CopyTo(grown);
            ArrayPool<byte>.Shared.Return(_buffer);
            _buffer = grown;
            _start = 0;
            _end = pending;
        }
    }

    /// <summary>Processes complete lines; returns an outcome as soon as one is ready.</summary>
    private SseEvent? Parse(ref ReadOnlySequence<byte> buffer, bool completed)
    {
        if (!_bomChecked)
        {
            if (buffer.Length < 3 && !completed)
            {
                var prefix = (Span<byte>)stackalloc byte[3];
                buffer.CopyTo(prefix);
                if (((ReadOnlySpan<byte>)"\uFEFF"u8)[..(int)buffer.Length].SequenceEqual(prefix[..(int)buffer.Length]))
                {
                    return null; // could still be a BOM: wait for more
                }
            }
            _bomChecked = true;
            if (buffer.Length >= 3)
            {
                var first = (Span<byte>)stackalloc byte[3];
                buffer.Slice(0, 3).CopyTo(first);
                if (first.SequenceEqual("\uFEFF"u8))
                {
                    buffer = buffer.Slice(3);
                }
            }
        }

        while (!buffer.IsEmpty)
        {
            if (_pendingCr)
            {
                _pendingCr = false;
                if (buffer.FirstSpan[0] == (byte)'\n')
                {
                    buffer = buffer.Slice(1);
                    continue;
                }
            }

            var reader = new SequenceReader<byte>(buffer);
            if (!reader.TryReadToAny(out ReadOnlySequence<byte> line, "\r\n"u8, advancePastDelimiter: false))
            {
                // No complete line yet. Never buffer more than one line's worth.
                if (_skippingLine || buffer.Length > _maxLineBytes)
                {
                    if (!_skippingLine)
                    {
                        _skippingLine = true;
                        _dataTooLarge = true;
                    }
                    buffer = buffer.Slice(buffer.End);
                }
                return null;
            }

            reader.TryRead(out var terminator);
            _pendingCr = terminator == (byte)'\r';
            buffer = buffer.Slice(reader.Position);

            if (_skippingLine)
            {
                _skippingLine = false; // the tail of an over-long line
                continue;
            }
            if (line.Length > _maxLineBytes)
            {
                _dataTooLarge = true;
                continue;
            }
            if (ProcessLine(line) is { } outcome)
            {
                return outcome;
            }
        }
        return null;
    }

    private SseEvent? ProcessLine(ReadOnlySequence<byte> line)
    {
        if (line.IsEmpty)
        {
            return Dispatch();
        }
        var first = line.FirstSpan[0];
        if (first == (byte)':')
        {
            return null; // comment
        }

        ReadOnlySequence<byte> field;
        ReadOnlySequence<byte> value;
        if (line.PositionOf((byte)':') is { } colon)
        {
            field = line.Slice(0, colon);
            value = line.Slice(line.GetPosition(1, colon));
            if (!value.IsEmpty && value.FirstSpan[0] == (byte)' ')
            {
                value = value.Slice(1);
            }
        }
        else
        {
            field = line;
            value = default;
        }
        if (field.Length > 5)
        {
            return null; // not one of ours: ignored, as the spec says
        }
        var name = (Span<byte>)stackalloc byte[5];
        field.CopyTo(name);
        name = name[..(int)field.Length];

        if (name.SequenceEqual("data"u8))
        {
            AppendData(value);
        }
        else if (name.SequenceEqual("event"u8))
        {
            _type = value.Length > MaxTypeBytes ? null : TypeName(value);
        }
        else if (name.SequenceEqual("id"u8))
        {
            if (value.PositionOf((byte)0) is null && value.Length <= MaxIdBytes)
            {
                _pendingId ??= new byte[MaxIdBytes];
                value.CopyTo(_pendingId);
                _pendingIdLength = (int)value.Length;
            }
        }
        else if (name.SequenceEqual("retry"u8))
        {
            if (value.Length is > 0 and <= 9)
            {
                var digits = (Span<byte>)stackalloc byte[9];
                value.CopyTo(digits);
                digits = digits[..(int)value.Length];
                var ms = 0;
                foreach (var d in digits)
                {
                    if (d is < (byte)'0' or > (byte)'9')
                    {
                        return null;
                    }
                    ms = (ms * 10) + (d - '0');
                }
                RetryMilliseconds = ms;
            }
        }
        return null;
    }

    private void AppendData(ReadOnlySequence<byte> value)
    {
        if (_dataTooLarge)
        {
            return;
        }
        var needed = _dataLength + (int)value.Length + 1;
        if (needed - 1 > _maxEventBytes)
        {
            _dataTooLarge = true;
            return;
        }
        if (needed > _data.Length)
        {
            var grown = ArrayPool<byte>.Shared.Rent(Math.Max(needed, Math.Min(_maxEventBytes + 1, Math.Max(4096, _data.Length * 2))));
            _data.AsSpan(0, _dataLength).CopyTo(grown);
            ReturnData();
            _data = grown;
        }
        value.CopyTo(_data.AsSpan(_dataLength));
        _dataLength += (int)value.Length;
        _data[_dataLength++] = (byte)'\n';
    }

    private SseEvent? Dispatch()
    {
        if (_pendingIdLength >= 0)
        {
            CommitId();
        }
        var type = _type;
        _type = null;
        if (_dataTooLarge)
        {
            _dataTooLarge = false;
            _dataLength = 0;
            return new SseEvent(SseReadKind.TooLarge, type, null);
        }
        var length = _dataLength - 1; // without the last LF
        _dataLength = 0;
        if (length <= 0 || IsWhitespace(_data.AsSpan(0, length)))
        {
            return null; // no data (a priming event, or just an id or a retry): nothing to hand on
        }
        return new SseEvent(SseReadKind.Event, type, _data.AsSpan(0, length).ToArray());
    }

    /// <summary>The whole event set an id: it becomes the last event id (the SSE spec's "last event ID string").</summary>
    private void CommitId()
    {
        _id ??= new byte[MaxIdBytes];
        _pendingId.AsSpan(0, _pendingIdLength).CopyTo(_id);
        _idLength = _pendingIdLength;
        _idString = null;
        _pendingIdLength = -1;
    }

    /// <summary>True when the data holds no JSON value at all (stops at the first other byte, so JSON costs one look).</summary>
    private static bool IsWhitespace(ReadOnlySpan<byte> data) => data.IndexOfAnyExcept(" \t\r\n"u8) < 0;

    private static string TypeName(ReadOnlySequence<byte> value)
    {
        if (value.IsSingleSegment)
        {
            var span = value.FirstSpan;
            if (span.SequenceEqual("message"u8))
            {
                return MessageType;
            }
            if (span.SequenceEqual("endpoint"u8))
            {
                return EndpointType;
            }
        }
        return Encoding.UTF8.GetString(value);
    }

    private void ReturnData()
    {
        if (_data.Length > 0)
        {
            ArrayPool<byte>.Shared.Return(_data);
        }
        _data = [];
    }

    public ValueTask DisposeAsync()
    {
        Release();
        return default;
    }

    /// <summary>Gives the buffers back and lets go of the stream (which the reader never owned).</summary>
    internal void Release()
    {
        ReturnData();
        if (_buffer.Length > 0)
        {
            ArrayPool<byte>.Shared.Return(_buffer);
            _buffer = [];
        }
        _start = _end = 0;
        _stream = Stream.Null;
    }
}

/// <summary>
/// Readers for short streams (the SSE answer to one POST), reused instead of allocated per answer. Lock-free; keeps at
/// most <see cref="MaxIdle"/> idle readers, which hold no buffers (they are given back when a reader is returned).
/// </summary>
internal sealed class SseReaderPool(int maxEventBytes)
{
    public const int MaxIdle = 64;

    private readonly System.Collections.Concurrent.ConcurrentQueue<SseReader> _idle = new();
    private int _idleCount;

    public SseReader Rent(Stream stream)
    {
        if (_idle.TryDequeue(out var reader))
        {
            Interlocked.Decrement(ref _idleCount);
            reader.Reset(stream);
            return reader;
        }
        return new SseReader(stream, maxEventBytes);
    }

    /// <summary>Gives the reader's buffers back and keeps it for another stream. The caller must not use it again.</summary>
    public void Return(SseReader reader)
    {
        reader.Release();
        if (Interlocked.Increment(ref _idleCount) <= MaxIdle)
        {
            _idle.Enqueue(reader);
            return;
        }
        Interlocked.Decrement(ref _idleCount);
    }
}
