using System.Collections.Concurrent;
using System.Collections.Frozen;
using Sidecar.Policy;

namespace Sidecar.Decisions;

/// <summary>A pinned tool seen upstream with a definition its pin does not match: what the <c>tool_pin_mismatch</c> audit event says.</summary>
public readonly record struct PinMismatch(string Tool, string Pinned, string Observed);

/// <summary>
/// What one upstream server's pinned tools were last seen as: the hash of each one's definition in the last
/// <c>tools/list</c> answer the gateway filtered (any session's, wrap's or a stateless request's). It belongs to the
/// server, not to a session: the snapshot builder hands it on to the next snapshot while the
/// server's definition (command, URL, headers) is unchanged, so a reload that only edits policies keeps what was seen,
/// and a changed server starts afresh.
/// </summary>
/// <remarks>
/// <para>Only tools some policy of the server pins are watched (<see cref="ServerPins"/>), so the state is bounded by
/// the policies, not by what an upstream lists. Before a pinned tool has been seen in a list its pin cannot be
/// checked, and calls to it are decided by the rules alone: the check holds from the first list the gateway sees.</para>
/// <para>The call path reads it without locks or allocation (<see cref="Drifted"/>: two frozen-or-concurrent lookups by
/// span and one string comparison); lists write it.</para>
/// </remarks>
public sealed class PinWatch
{
    private readonly ConcurrentDictionary<string, string> _observed = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, string>.AlternateLookup<ReadOnlySpan<char>> _lookup;

    /// <summary>(tool, pin) pairs whose mismatch has been reported, with the hash it was reported for: once per change, not per list.</summary>
    private readonly ConcurrentDictionary<(string Tool, string Pin), string> _reported = new();

    public PinWatch() => _lookup = _observed.GetAlternateLookup<ReadOnlySpan<char>>();

    /// <summary>The hash <paramref name="tool"/>'s definition had in the last list that showed it.</summary>
    public bool TryGetObserved(ReadOnlySpan<char> tool, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out string? hash)
        => _lookup.TryGetValue(tool, out hash);

    /// <summary>
    /// True when <paramref name="policy"/> pins <paramref name="tool"/> and the tool was last seen with another
    /// definition: it is hidden and its calls are denied (rule <see cref="PolicyModel.PinRule"/>). Allocation-free.
    /// </summary>
    public bool Drifted(PolicyModel policy, ReadOnlySpan<char> tool)
        => policy.TryGetPin(tool, out var pin) && _lookup.TryGetValue(tool, out var seen) && !string.Equals(pin, seen, StringComparison.Ordinal);

    /// <summary>
    /// Records that a list showed <paramref name="tool"/> with definition hash <paramref name="hash"/>, and adds to
    /// <paramref name="mismatches"/> each pin of <paramref name="pins"/> it contradicts that was not already reported
    /// for this hash. A pin it matches is cleared, so that a later change is reported again.
    /// </summary>
    public void Observe(string tool, string hash, ReadOnlySpan<string> pins, List<PinMismatch> mismatches)
    {
        if (!_lookup.TryGetValue(tool, out var seen) || !string.Equals(seen, hash, StringComparison.Ordinal))
        {
            _observed[tool] = hash;
        }
        foreach (var pin in pins)
        {
            if (string.Equals(pin, hash, StringComparison.Ordinal))
            {
                _reported.TryRemove((tool, pin), out _);
                continue;
            }
            if (_reported.TryAdd((tool, pin), hash))
            {
                mismatches.Add(new PinMismatch(tool, pin, hash)); // the first list to show the change
            }
            else if (_reported.TryGetValue((tool, pin), out var reported) && !string.Equals(reported, hash, StringComparison.Ordinal)
                     && _reported.TryUpdate((tool, pin), hash, reported))
            {
                mismatches.Add(new PinMismatch(tool, pin, hash)); // changed again, to yet another definition
            }
        }
    }

    /// <summary>Forgets tools no policy of the server pins any longer (a reload carried this watch over).</summary>
    public void Retain(FrozenDictionary<string, string[]> watched)
    {
        foreach (var tool in _observed.Keys)
        {
            if (!watched.ContainsKey(tool))
            {
                _observed.TryRemove(tool, out _);
            }
        }
        foreach (var key in _reported.Keys)
        {
            if (!watched.TryGetValue(key.Tool, out var pins) || Array.IndexOf(pins, key.Pin) < 0)
            {
                _reported.TryRemove(key, out _);
            }
        }
    }
}

/// <summary>
/// The pins of every policy one server applies in a snapshot (its own and each grant's), by tool: which tools a
/// <c>tools/list</c> answer must be hashed for, and against which pins. Built with the snapshot; immutable.
/// </summary>
public sealed class ServerPins
{
    public static readonly ServerPins None = new(new PinWatch(), []);

    public ServerPins(PinWatch watch, IEnumerable<PolicyModel> policies)
    {
        Watch = watch;
        var byTool = new Dictionary<string, List<string>>(StringComparer.Ordinal);
        foreach (var policy in policies)
        {
            foreach (var (tool, hash) in policy.Pins)
            {
                if (!byTool.TryGetValue(tool, out var list))
                {
                    byTool[tool] = list = [];
                }
                if (!list.Contains(hash))
                {
                    list.Add(hash);
                }
            }
        }
        Watched = byTool.ToFrozenDictionary(p => p.Key, p => p.Value.ToArray(), StringComparer.Ordinal);
    }

    /// <summary>What the server's pinned tools were last seen as (shared across snapshots while the server is unchanged).</summary>
    public PinWatch Watch { get; }

    /// <summary>Tool name → the distinct pins the server's policies hold for it.</summary>
    public FrozenDictionary<string, string[]> Watched { get; }

    /// <summary>Whether any policy of the server pins anything: when not, lists are not hashed at all.</summary>
    public bool Any => Watched.Count > 0;
}
