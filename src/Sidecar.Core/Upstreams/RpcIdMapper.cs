using System.Buffers;
using System.Buffers.Text;
using System.Collections.Concurrent;
using System.Text.Json;
using Sidecar.JsonRpc;
using Sidecar.Sessions;

namespace Sidecar.Upstreams;

/// <summary>
/// One upstream's request-id space, shared by several sources of requests (<see cref="RpcIdMapper{TLane}"/>s: the
/// sessions on one shared process). Every request that goes upstream gets a fresh number from one counter, so ids
/// from different sources never collide upstream; this table remembers, for each number in flight, whose request it
/// is and the id token that source used, to hand the answer back with that token, byte for byte.
/// </summary>
/// <remarks>
/// Lock-free: one <see cref="ConcurrentDictionary{TKey, TValue}"/> keyed by the upstream number, and an
/// <see cref="Interlocked"/> counter. A route is removed exactly once (by its answer, a cancellation, a failed send,
/// or its source going away), and whoever removes it lowers its source's <see cref="RpcIdMapper{TLane}.InFlight"/>.
/// An answer whose number is not (or no longer) in the table is dropped: it belongs to nobody.
/// </remarks>
internal sealed class RpcIdSpace<TLane> where TLane : class
{
    private readonly ConcurrentDictionary<long, RpcIdRoute<TLane>> _routes = new();
    private long _next;

    /// <summary>Requests in flight over all sources (for tests and logs; takes the dictionary's locks).</summary>
    public int Count => _routes.Count;

    internal long NextId() => Interlocked.Increment(ref _next);

    internal void Add(RpcIdRoute<TLane> route) => _routes[route.UpstreamId] = route;

    /// <summary>Removes the route of <paramref name="upstreamId"/>; only the first caller gets it.</summary>
    public bool TryTake(long upstreamId, out RpcIdRoute<TLane> route)
    {
        if (!_routes.TryRemove(upstreamId, out route!))
        {
            return false;
        }
        route.Mapper.Settled();
        return true;
    }

    /// <summary>The route of <paramref name="upstreamId"/>, left in place (progress for a request still in flight).</summary>
    public bool TryPeek(long upstreamId, out RpcIdRoute<TLane> route) => _routes.TryGetValue(upstreamId, out route!);

    /// <summary>
    /// The server answered (<paramref name="scan"/> is a response or error response of <paramref name="message"/>):
    /// takes the route of its id and returns the answer with the source's own id token in place of the upstream's.
    /// False (nothing taken) when the id is not a number this space gave out, or its request is no longer in flight.
    /// </summary>
    public bool TryRouteResponse(ReadOnlySpan<byte> message, in JsonRpcScan scan, out RpcIdRoute<TLane> route, out byte[] rewritten)
    {
        rewritten = [];
        if (!TryParseNumber(scan.Id.SliceOf(message), out var upstreamId) || !TryTake(upstreamId, out route))
        {
            route = null!;
            return false;
        }
        rewritten = Splice(message, scan.Id, route.RawId);
        return true;
    }

    /// <summary>
    /// A <c>notifications/progress</c> from the server: finds the request whose progress token it names (the token
    /// upstream is the request's upstream id) and returns the notification with the source's own token put back. The
    /// route stays: progress comes before the answer. False for a token this space did not give out, or one whose
    /// request has been answered, or whose request did not ask for progress.
    /// </summary>
    public bool TryRouteProgress(ReadOnlySpan<byte> message, in JsonRpcScan scan, out RpcIdRoute<TLane> route, out byte[] rewritten)
    {
        rewritten = [];
        route = null!;
        if (!RpcIdMapper<TLane>.TryFindMember(message, scan.Params, "progressToken"u8, out var token)
            || !TryParseNumber(token.SliceOf(message), out var upstreamId)
            || !TryPeek(upstreamId, out route) || route.RawProgressToken is not { } original)
        {
            return false;
        }
        rewritten = Splice(message, token, original);
        return true;
    }

    /// <summary>Removes every route of <paramref name="mapper"/> (its source went away: later answers are dropped); returns how many.</summary>
    public int Drop(RpcIdMapper<TLane> mapper)
    {
        var dropped = 0;
        foreach (var (id, route) in _routes)
        {
            if (ReferenceEquals(route.Mapper, mapper) && TryTake(id, out _))
            {
                dropped++;
            }
        }
        return dropped;
    }

    /// <summary>Removes every route (the upstream is gone) and hands each to <paramref name="onDropped"/>.</summary>
    public void Clear(Action<RpcIdRoute<TLane>>? onDropped = null)
    {
        foreach (var (id, _) in _routes)
        {
            if (TryTake(id, out var route))
            {
                onDropped?.Invoke(route);
            }
        }
    }

    /// <summary>The routes of <paramref name="mapper"/> (rare paths: cancellations).</summary>
    internal RpcIdRoute<TLane>? Find(RpcIdMapper<TLane> mapper, in RpcId laneId)
    {
        foreach (var (_, route) in _routes)
        {
            if (ReferenceEquals(route.Mapper, mapper) && RpcId.TryCreate(route.RawId, out var key) && key == laneId)
            {
                return route;
            }
        }
        return null;
    }

    /// <summary>
    /// An id or token this space gave out: a JSON integer (<c>17</c>; <c>17.0</c> as a JavaScript server may write it).
    /// Strings are never ours.
    /// </summary>
    internal static bool TryParseNumber(ReadOnlySpan<byte> token, out long value)
    {
        if (Utf8Parser.TryParse(token, out value, out var consumed) && consumed == token.Length)
        {
            return true;
        }
        value = 0;
        if (token.IsEmpty || token[0] == (byte)'"')
        {
            return false;
        }
        try
        {
            var reader = new Utf8JsonReader(token);
            if (reader.Read() && reader.TokenType == JsonTokenType.Number && reader.TryGetDecimal(out var number)
                && number == decimal.Truncate(number) && number is >= long.MinValue and <= long.MaxValue)
            {
                value = (long)number;
                return true;
            }
        }
        catch (JsonException)
        {
        }
        return false;
    }

    /// <summary><paramref name="message"/> with the bytes of <paramref name="range"/> replaced by <paramref name="with"/>, in a fresh array.</summary>
    internal static byte[] Splice(ReadOnlySpan<byte> message, TokenRange range, ReadOnlySpan<byte> with)
    {
        var result = new byte[message.Length - range.Length + with.Length];
        message[..range.Start].CopyTo(result);
        with.CopyTo(result.AsSpan(range.Start));
        message[range.End..].CopyTo(result.AsSpan(range.Start + with.Length));
        return result;
    }
}

/// <summary>One request in flight upstream: whose it is, and what to put back in its answer.</summary>
internal sealed class RpcIdRoute<TLane>(RpcIdMapper<TLane> mapper, long upstreamId, byte[] rawId, byte[]? rawProgressToken, long correlation, object? tag)
    where TLane : class
{
    public RpcIdMapper<TLane> Mapper { get; } = mapper;

    /// <summary>The source's lane (null for a request of the upstream's owner itself).</summary>
    public TLane? Lane => Mapper.Lane;

    public long UpstreamId { get; } = upstreamId;

    /// <summary>The source's id token, exactly as it wrote it (<c>7</c>, <c>"a-7"</c>, <c>"\u0061"</c>).</summary>
    public byte[] RawId { get; } = rawId;

    /// <summary>The source's <c>params._meta.progressToken</c>, exactly as it wrote it; null when the request asked for no progress.</summary>
    public byte[]? RawProgressToken { get; } = rawProgressToken;

    /// <summary>The correlation the source gave its send (<see cref="IUpstreamConnection.SendAsync"/>), for a failed send.</summary>
    public long Correlation { get; } = correlation;

    /// <summary>Whatever the owner of the space wants to remember about the request.</summary>
    public object? Tag { get; } = tag;
}

/// <summary>
/// The id mapping of one source of requests (one session's lane on a shared upstream) in an <see cref="RpcIdSpace{TLane}"/>.
/// </summary>
/// <remarks>
/// <para>
/// <b>Requests</b> (<see cref="MapRequest"/>): the id becomes the next number of the space, and a
/// <c>params._meta.progressToken</c> (string or number) becomes that same number; the rest of the message is copied
/// byte for byte. The space remembers the original id and token to put back into the answer and into
/// <c>notifications/progress</c> (<see cref="RpcIdSpace{TLane}.TryRouteResponse"/>, <see cref="RpcIdSpace{TLane}.TryRouteProgress"/>).
/// </para>
/// <para>
/// <b>Cancellations</b> (<see cref="TryMapCancellation"/>): <c>params.requestId</c> of a <c>notifications/cancelled</c>
/// names the source's own id; it becomes the upstream number, compared as the peer compares ids (strings unescaped,
/// numbers by value). The route goes at once: whoever cancels ignores the answer, and a server need not send one.
/// A cancellation of a request not in flight is not sent at all.
/// </para>
/// <para>
/// Ids the source reuses, or that another source uses at the same time, are no problem: every send is a new number.
/// </para>
/// </remarks>
internal sealed class RpcIdMapper<TLane>(RpcIdSpace<TLane> space, TLane? lane) where TLane : class
{
    private int _inFlight;

    public RpcIdSpace<TLane> Space { get; } = space;

    public TLane? Lane { get; } = lane;

    /// <summary>This source's requests in flight upstream.</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    internal void Settled() => Interlocked.Decrement(ref _inFlight);

    /// <summary>
    /// Maps the request <paramref name="message"/> (scanned as <paramref name="scan"/>) into a buffer rented from the
    /// shared pool and registers its route (before it is sent: the answer may come before the send returns).
    /// Dispose the result once the message has been handed on; <see cref="Forget"/> if it could not be.
    /// </summary>
    public MappedMessage MapRequest(ReadOnlySpan<byte> message, in JsonRpcScan scan, long correlation, object? tag = null)
    {
        var upstreamId = Space.NextId();
        Span<byte> digits = stackalloc byte[20];
        Utf8Formatter.TryFormat(upstreamId, digits, out var length);
        digits = digits[..length];

        var token = default(TokenRange);
        byte[]? rawToken = null;
        if (TryFindMember(message, scan.Params, "_meta"u8, out var meta) && TryFindMember(message, meta, "progressToken"u8, out token)
            && message[token.Start] is (byte)'"' or (byte)'-' or (>= (byte)'0' and <= (byte)'9'))
        {
            rawToken = token.SliceOf(message).ToArray();
        }
        else
        {
            token = default;
        }

        var route = new RpcIdRoute<TLane>(this, upstreamId, scan.Id.SliceOf(message).ToArray(), rawToken, correlation, tag);
        var buffer = ArrayPool<byte>.Shared.Rent(message.Length + (2 * digits.Length));
        var written = rawToken is null
            ? Write(message, scan.Id, digits, default, default, buffer)
            : Write(message, scan.Id, digits, token, digits, buffer);
        Interlocked.Increment(ref _inFlight);
        Space.Add(route);
        return new MappedMessage(buffer, written, upstreamId);
    }

    /// <summary>
    /// Maps a <c>notifications/cancelled</c> from this source: its <c>params.requestId</c> becomes the upstream id of
    /// that request, whose route is dropped. False (nothing to send) when the request is not in flight upstream.
    /// </summary>
    public bool TryMapCancellation(ReadOnlySpan<byte> message, in JsonRpcScan scan, out MappedMessage mapped)
    {
        mapped = default;
        if (!TryFindMember(message, scan.Params, "requestId"u8, out var requestId) || !RpcId.TryCreate(requestId.SliceOf(message), out var key)
            || Space.Find(this, key) is not { } route || !Space.TryTake(route.UpstreamId, out _))
        {
            return false;
        }
        Span<byte> digits = stackalloc byte[20];
        Utf8Formatter.TryFormat(route.UpstreamId, digits, out var length);
        var buffer = ArrayPool<byte>.Shared.Rent(message.Length + length);
        var written = Write(message, requestId, digits[..length], default, default, buffer);
        mapped = new MappedMessage(buffer, written, route.UpstreamId);
        return true;
    }

    /// <summary>The request mapped as <paramref name="upstreamId"/> never left (its send failed): its route goes.</summary>
    public bool Forget(long upstreamId) => Space.TryPeek(upstreamId, out var route) && ReferenceEquals(route.Mapper, this) && Space.TryTake(upstreamId, out _);

    /// <summary>This source went away: every route of its requests goes, and answers that come later are dropped.</summary>
    public int Clear() => Space.Drop(this);

    /// <summary>Copies <paramref name="message"/> with one or two ranges (in either order, not overlapping) replaced.</summary>
    private static int Write(ReadOnlySpan<byte> message, TokenRange a, ReadOnlySpan<byte> withA, TokenRange b, ReadOnlySpan<byte> withB, Span<byte> destination)
    {
        if (b.IsEmpty)
        {
            message[..a.Start].CopyTo(destination);
            withA.CopyTo(destination[a.Start..]);
            message[a.End..].CopyTo(destination[(a.Start + withA.Length)..]);
            return message.Length - a.Length + withA.Length;
        }
        if (b.Start < a.Start)
        {
            (a, b) = (b, a);
            var swap = withA;
            withA = withB;
            withB = swap;
        }
        var at = 0;
        message[..a.Start].CopyTo(destination);
        at += a.Start;
        withA.CopyTo(destination[at..]);
        at += withA.Length;
        message[a.End..b.Start].CopyTo(destination[at..]);
        at += b.Start - a.End;
        withB.CopyTo(destination[at..]);
        at += withB.Length;
        message[b.End..].CopyTo(destination[at..]);
        return at + message.Length - b.End;
    }

    /// <summary>
    /// Finds member <paramref name="name"/> of the object at <paramref name="container"/> in <paramref name="message"/>
    /// (top level of that object only; names compared unescaped) and returns the range of its value: a whole object or
    /// array, or the raw token (strings with their quotes). False when the container is empty or not an object, or
    /// has no such member. Allocates nothing. The message has been scanned: duplicate names cannot occur.
    /// </summary>
    internal static bool TryFindMember(ReadOnlySpan<byte> message, TokenRange container, ReadOnlySpan<byte> name, out TokenRange value)
    {
        value = default;
        if (container.IsEmpty || container.Start < 0 || container.End > message.Length)
        {
            return false;
        }
        try
        {
            var reader = new Utf8JsonReader(container.SliceOf(message), new JsonReaderOptions { MaxDepth = int.MaxValue });
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                return false;
            }
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                if (!reader.ValueTextEquals(name))
                {
                    reader.Skip();
                    continue;
                }
                if (!reader.Read())
                {
                    return false;
                }
                var start = (int)reader.TokenStartIndex;
                if (reader.TokenType is JsonTokenType.StartObject or JsonTokenType.StartArray)
                {
                    reader.Skip();
                }
                value = new TokenRange(container.Start + start, (int)reader.BytesConsumed - start);
                return true;
            }
        }
        catch (JsonException)
        {
        }
        return false;
    }
}

/// <summary>A mapped message in a buffer rented from <see cref="ArrayPool{T}.Shared"/>: dispose it once it has been handed on.</summary>
internal readonly struct MappedMessage(byte[] buffer, int length, long upstreamId) : IDisposable
{
    public long UpstreamId { get; } = upstreamId;

    public ReadOnlySpan<byte> Span => buffer.AsSpan(0, length);

    public ReadOnlySequence<byte> Sequence => new(buffer, 0, length);

    public void Dispose()
    {
        if (buffer is not null)
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
