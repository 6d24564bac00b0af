using System.Buffers;
using System.Runtime.CompilerServices;
using System.Text.Json;

namespace Sidecar.JsonRpc;

/// <summary>One property name of an open object, or (Position == -1) the marker that opens an object's frame.</summary>
internal readonly struct KeyEntry(int offset, int length, int position)
{
    /// <summary>Where the unescaped name is: &gt;= 0 an offset into the source message, &lt; 0 the complement of an arena offset.
    /// For a frame marker: the arena mark to restore.</summary>
    public readonly int Offset = offset;

    /// <summary>Length of the unescaped name. For a frame marker: the previous frame's start.</summary>
    public readonly int Length = length;

    /// <summary>Offset of the property name token in the message (for error reporting); -1 for a frame marker.</summary>
    public readonly int Position = position;
}

/// <summary>
/// Detects duplicate property names (compared unescaped) in every object of a message without allocating:
/// names live in the source message when they need no unescaping, else in a scratch arena; entries of the
/// open objects form a stack. Small objects are checked linearly as names arrive; objects with more than
/// <see cref="LinearLimit"/> names are sorted (heapsort, by length then bytes) when they close, so neither
/// large objects nor crafted names can cause quadratic work. Storage starts on the caller's stack and grows
/// through <see cref="ArrayPool{T}.Shared"/>; call <see cref="Dispose"/> to return it.
/// </summary>
internal ref struct KeyTracker
{
    private const int LinearLimit = 16;

    private readonly ReadOnlySpan<byte> _source;
    private readonly bool _referenceSource;
    private Span<KeyEntry> _entries;
    private KeyEntry[]? _rentedEntries;
    private int _count;
    private int _frameStart;
    private Span<byte> _arena;
    private byte[]? _rentedArena;
    private int _arenaUsed;

    /// <param name="entries">Initial entry storage (typically stackalloc'd).</param>
    /// <param name="arena">Initial name storage (typically stackalloc'd).</param>
    /// <param name="source">The whole message when it is one contiguous span, so plain names can be referenced in place.</param>
    /// <param name="referenceSource">False for multi-segment input: every name is copied to the arena.</param>
    public KeyTracker(Span<KeyEntry> entries, Span<byte> arena, ReadOnlySpan<byte> source, bool referenceSource)
    {
        _entries = entries;
        _arena = arena;
        _source = source;
        _referenceSource = referenceSource;
    }

    /// <summary>Opens the frame of a new object.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void PushObject()
    {
        if (_count == _entries.Length)
        {
            GrowEntries();
        }

        _entries[_count++] = new KeyEntry(_arenaUsed, _frameStart, -1);
        _frameStart = _count;
    }

    /// <summary>
    /// Records the current property name (the reader must be on a PropertyName token) and returns its unescaped
    /// bytes. False when the name already occurs in the current object (small objects only; large ones are checked
    /// by <see cref="PopObject"/>).
    /// </summary>
    public bool Add(ref Utf8JsonReader reader, out ReadOnlySpan<byte> name)
    {
        int offset;
        if (_referenceSource && !reader.ValueIsEscaped && !reader.HasValueSequence)
        {
            name = reader.ValueSpan;
            offset = (int)reader.TokenStartIndex + 1;
        }
        else
        {
            name = CopyName(ref reader, out offset);
        }

        if (_count == _entries.Length)
        {
            GrowEntries();
        }

        int start = _frameStart;
        if (_count - start < LinearLimit)
        {
            for (int i = start; i < _count; i++)
            {
                KeyEntry entry = _entries[i];
                if (entry.Length == name.Length && NameOf(entry).SequenceEqual(name))
                {
                    return false;
                }
            }
        }

        _entries[_count++] = new KeyEntry(offset, name.Length, (int)reader.TokenStartIndex);
        return true;
    }

    /// <summary>Closes the current object's frame. False (with the offset of a duplicated name) when it held a duplicate.</summary>
    public bool PopObject(out int duplicatePosition)
    {
        int start = _frameStart;
        int count = _count - start;
        duplicatePosition = -1;
        bool unique = count <= LinearLimit || AllUnique(_entries.Slice(start, count), out duplicatePosition);
        KeyEntry marker = _entries[start - 1];
        _count = start - 1;
        _arenaUsed = marker.Offset;
        _frameStart = marker.Length;
        return unique;
    }

    /// <summary>Returns pooled storage.</summary>
    public void Dispose()
    {
        if (_rentedEntries is not null)
        {
            ArrayPool<KeyEntry>.Shared.Return(_rentedEntries);
            _rentedEntries = null;
        }

        if (_rentedArena is not null)
        {
            ArrayPool<byte>.Shared.Return(_rentedArena);
            _rentedArena = null;
        }

        _entries = default;
        _arena = default;
    }

    private readonly ReadOnlySpan<byte> NameOf(KeyEntry entry)
        => entry.Offset >= 0 ? _source.Slice(entry.Offset, entry.Length) : _arena.Slice(~entry.Offset, entry.Length);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private ReadOnlySpan<byte> CopyName(ref Utf8JsonReader reader, out int offset)
    {
        // The unescaped name is never longer than the raw one.
        int raw = reader.HasValueSequence ? checked((int)reader.ValueSequence.Length) : reader.ValueSpan.Length;
        if (_arena.Length - _arenaUsed < raw)
        {
            GrowArena(raw);
        }

        int written = reader.CopyString(_arena[_arenaUsed..]);
        offset = ~_arenaUsed;
        ReadOnlySpan<byte> name = _arena.Slice(_arenaUsed, written);
        _arenaUsed += written;
        return name;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void GrowArena(int needed)
    {
        int size = Math.Max(_arena.Length * 2, _arenaUsed + needed);
        byte[] bigger = ArrayPool<byte>.Shared.Rent(size);
        _arena[.._arenaUsed].CopyTo(bigger);
        if (_rentedArena is not null)
        {
            ArrayPool<byte>.Shared.Return(_rentedArena);
        }

        _rentedArena = bigger;
        _arena = bigger;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void GrowEntries()
    {
        KeyEntry[] bigger = ArrayPool<KeyEntry>.Shared.Rent(Math.Max(_entries.Length * 2, 64));
        _entries[.._count].CopyTo(bigger);
        if (_rentedEntries is not null)
        {
            ArrayPool<KeyEntry>.Shared.Return(_rentedEntries);
        }

        _rentedEntries = bigger;
        _entries = bigger;
    }

    /// <summary>Sorts a large object's names and looks for equal neighbours.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private readonly bool AllUnique(Span<KeyEntry> frame, out int duplicatePosition)
    {
        HeapSort(frame);
        for (int i = 1; i < frame.Length; i++)
        {
            if (Compare(frame[i - 1], frame[i]) == 0)
            {
                duplicatePosition = Math.Max(frame[i - 1].Position, frame[i].Position);
                return false;
            }
        }

        duplicatePosition = -1;
        return true;
    }

    private readonly int Compare(KeyEntry a, KeyEntry b)
        => a.Length != b.Length ? a.Length.CompareTo(b.Length) : NameOf(a).SequenceCompareTo(NameOf(b));

    private readonly void HeapSort(Span<KeyEntry> items)
    {
        int n = items.Length;
        for (int i = (n / 2) - 1; i >= 0; i--)
        {
            SiftDown(items, i, n);
        }

        for (int end = n - 1; end > 0; end--)
        {
            (items[0], items[end]) = (items[end], items[0]);
            SiftDown(items, 0, end);
        }
    }

    private readonly void SiftDown(Span<KeyEntry> items, int root, int n)
    {
        while (true)
        {
            int child = (2 * root) + 1;
            if (child >= n)
            {
                return;
            }

            if (child + 1 < n && Compare(items[child], items[child + 1]) < 0)
            {
                child++;
            }

            if (Compare(items[root], items[child]) >= 0)
            {
                return;
            }

            (items[root], items[child]) = (items[child], items[root]);
            root = child;
        }
    }
}
