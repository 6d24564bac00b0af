using System.Numerics;
using System.Runtime.InteropServices;

namespace Sidecar.Audit;

/// <summary>
/// A bounded multi-producer, single-consumer ring of <see cref="AuditEntry"/> (Vyukov's sequence-numbered slots): a
/// producer claims a slot with one compare-and-swap, fills it and publishes it; nothing blocks and nothing is
/// allocated once every slot has its byte buffer. When the ring is full, <see cref="TryClaim"/> fails at once.
/// </summary>
/// <remarks>
/// Places are counted in credits: a claim takes the credits for its own slot and for any record that must follow it
/// (a forwarded call's decision takes two: one for itself and one for its completion, which then claims with none and
/// always finds room). So once a call is forwarded, its completion can never be lost to a full ring; a call that can't
/// get both places is refused before anything is forwarded. The consumer gives a credit back with each slot it frees.
/// </remarks>
internal sealed class AuditQueue
{
    private readonly Slot[] _slots;
    private readonly int _mask;
    private readonly int _bufferBytes;
    private PaddedLong _enqueuePosition;
    private PaddedLong _credits; // places taken: slots in use plus completions promised
    private long _dequeuePosition;

    public AuditQueue(int capacity, int bufferBytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 2);
        capacity = (int)BitOperations.RoundUpToPowerOf2((uint)capacity);
        _slots = new Slot[capacity];
        for (var i = 0; i < capacity; i++)
        {
            _slots[i].Sequence = i;
        }
        _mask = capacity - 1;
        _bufferBytes = bufferBytes;
    }

    public int Capacity => _slots.Length;

    /// <summary>Bytes each slot can hold (tool name, request id and arguments together).</summary>
    public int BufferBytes => _bufferBytes;

    /// <summary>Approximate number of queued entries.</summary>
    public int Count => (int)Math.Max(0, Volatile.Read(ref _enqueuePosition.Value) - Volatile.Read(ref _dequeuePosition));

    /// <summary>Places taken: slots in use plus the completions promised to forwarded calls.</summary>
    public long Credits => Volatile.Read(ref _credits.Value);

    /// <summary>Claims a slot for a record that needs no later one.</summary>
    public bool TryClaim(out long position, out Span<byte> buffer) => TryClaim(1, out position, out buffer);

    /// <summary>
    /// Claims a slot, taking <paramref name="credits"/> places (0 for a record whose place was promised by an earlier
    /// claim). On success, fill <see cref="EntryAt"/> and <paramref name="buffer"/> (the slot's own, reused) and call
    /// <see cref="Publish"/>; until then the consumer waits at that slot. False when there is no room.
    /// </summary>
    public bool TryClaim(int credits, out long position, out Span<byte> buffer)
    {
        if (credits > 0 && Interlocked.Add(ref _credits.Value, credits) > _slots.Length)
        {
            Interlocked.Add(ref _credits.Value, -credits);
            position = -1;
            buffer = default;
            return false;
        }
        if (TryClaimSlot(out position, out buffer))
        {
            return true;
        }
        Interlocked.Add(ref _credits.Value, -credits);
        return false;
    }

    private bool TryClaimSlot(out long position, out Span<byte> buffer)
    {
        var pos = Volatile.Read(ref _enqueuePosition.Value);
        while (true)
        {
            ref var slot = ref _slots[pos & _mask];
            var diff = Volatile.Read(ref slot.Sequence) - pos;
            if (diff == 0)
            {
                if (Interlocked.CompareExchange(ref _enqueuePosition.Value, pos + 1, pos) == pos)
                {
                    // First use of the slot: its buffer is allocated once and kept.
                    slot.Buffer ??= new byte[_bufferBytes];
                    position = pos;
                    buffer = slot.Buffer;
                    return true;
                }
            }
            else if (diff < 0)
            {
                position = -1;
                buffer = default;
                return false;
            }
            pos = Volatile.Read(ref _enqueuePosition.Value);
        }
    }

    /// <summary>The entry of a claimed (producer) or peeked (consumer) slot.</summary>
    public ref AuditEntry EntryAt(long position) => ref _slots[position & _mask].Entry;

    /// <summary>The byte buffer of a peeked slot.</summary>
    public ReadOnlySpan<byte> BufferAt(long position) => _slots[position & _mask].Buffer;

    /// <summary>Hands a claimed slot to the consumer.</summary>
    public void Publish(long position) => Volatile.Write(ref _slots[position & _mask].Sequence, position + 1);

    /// <summary>Single consumer: the position of the next published entry, if there is one.</summary>
    public bool TryPeek(out long position)
    {
        position = _dequeuePosition;
        return Volatile.Read(ref _slots[position & _mask].Sequence) == position + 1;
    }

    /// <summary>Single consumer: frees the slot returned by <see cref="TryPeek"/> for producers.</summary>
    public void Release(long position)
    {
        ref var slot = ref _slots[position & _mask];
        slot.Entry = default; // drop string references promptly
        _dequeuePosition = position + 1;
        Volatile.Write(ref slot.Sequence, position + _slots.Length);
        Interlocked.Decrement(ref _credits.Value);
    }

    /// <summary>Single consumer: the position of the next entry to be read (every earlier one has been released).</summary>
    public long DequeuePosition => Volatile.Read(ref _dequeuePosition);

    private struct Slot
    {
        public long Sequence;
        public AuditEntry Entry;
        public byte[]? Buffer;
    }

    /// <summary>The producers' position on its own cache line, away from the consumer's.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 128)]
    private struct PaddedLong
    {
        [FieldOffset(64)]
        public long Value;
    }
}
