using System.Text.Json;

namespace Sidecar.Audit;

/// <summary>What <see cref="AuditVerifier"/> found.</summary>
public sealed record AuditVerifyResult(
    int Files,
    long Events,
    long FirstSequence,
    long LastSequence,
    long Dropped,
    long SinkFailures,
    string? Algorithm,
    IReadOnlyList<string> Problems,
    IReadOnlyList<string> Notes,
    IReadOnlyList<string> Warnings)
{
    public bool Intact => Problems.Count == 0;

    /// <summary>
    /// Intact, and nothing is known to be missing: no warnings (a run that ended without <c>audit_stop</c>), no dropped
    /// records (<c>audit_gap</c>) and no sink failures (<c>audit_sink_failure</c>). What <c>--strict</c> asks for.
    /// </summary>
    public bool Complete => Intact && Warnings.Count == 0 && Dropped == 0 && SinkFailures == 0;
}

/// <summary>
/// Checks a trail (<c>sidecar audit verify</c>): every line's hash, every <c>prev</c> link, and consecutive sequence
/// numbers, within and across files (ordered by their first sequence number). Reports the first problem of each file
/// with file and line; a chain that starts after sequence 1 (older files rotated away) is a note, not a problem.
/// Runs that ended without <c>audit_stop</c> (a crash, SIGKILL, out of memory) are warnings: an <c>audit_start</c>
/// whose previous event is not <c>audit_stop</c> (or that says so itself, <c>uncleanStop</c>), and a trail whose last
/// event is not <c>audit_stop</c>.
/// </summary>
public static class AuditVerifier
{
    public static AuditVerifyResult Verify(IReadOnlyList<string> files, byte[]? key)
    {
        var chain = new AuditChain(key);
        var problems = new List<string>();
        var notes = new List<string>();
        var warnings = new List<string>();
        var ordered = new List<(long First, string File)>();
        foreach (var file in files)
        {
            ordered.Add((FirstSequence(file), file));
        }
        ordered.Sort((a, b) => a.First != b.First ? a.First.CompareTo(b.First) : string.CompareOrdinal(a.File, b.File));

        long events = 0, first = 0, last = 0, dropped = 0, sinkFailures = 0;
        string? algorithm = null;
        string? lastType = null, lastWhere = null;
        byte[]? previousHash = null;
        var eventBuffer = new byte[64 * 1024];
        Span<byte> claimed = stackalloc byte[AuditChain.HashBytes];
        Span<byte> actual = stackalloc byte[AuditChain.HashBytes];
        foreach (var (_, file) in ordered)
        {
            var lineNumber = 0;
            var fileBroken = false;
            foreach (var line in ReadLines(file))
            {
                lineNumber++;
                if (fileBroken)
                {
                    continue;
                }
                var where = $"{file}:{lineNumber}";
                if (eventBuffer.Length < line.Length)
                {
                    eventBuffer = new byte[line.Length * 2];
                }
                if (!AuditChain.TrySplitLine(line, eventBuffer, out var eventLength, claimed))
                {
                    problems.Add($"{where}: not an audit event (no trailing \"hash\" field); the line was edited or cut");
                    fileBroken = true;
                    continue;
                }
                var eventJson = eventBuffer.AsSpan(0, eventLength);
                if (!TryReadFields(eventJson, out var fields))
                {
                    problems.Add($"{where}: not valid audit JSON (needs \"seq\", \"type\" and \"prev\")");
                    fileBroken = true;
                    continue;
                }
                if (fields.Type == "audit_start" && fields.Chain is { } alg)
                {
                    algorithm ??= alg;
                    if (alg == "hmac-sha256" && key is null)
                    {
                        problems.Add($"{where}: this trail is chained with an HMAC key; pass it (--key-env NAME) to verify");
                        return Result();
                    }
                }
                chain.Hash(eventJson, actual);
                if (!actual.SequenceEqual(claimed))
                {
                    problems.Add($"{where}: seq {fields.Sequence}: the hash does not match the event; it was edited"
                        + (key is null && events == 0 ? " (or the trail is HMAC-keyed: pass --key-env NAME)" : ""));
                    fileBroken = true;
                    continue;
                }
                if (previousHash is null)
                {
                    if (fields.Sequence != 1)
                    {
                        notes.Add($"{where}: the trail starts at seq {fields.Sequence}: earlier events are in files not given (rotated away?)");
                    }
                    else if (!fields.Prev.AsSpan().SequenceEqual(AuditChain.Genesis))
                    {
                        problems.Add($"{where}: seq 1 does not start a chain (its prev is not zero)");
                        fileBroken = true;
                        continue;
                    }
                    first = fields.Sequence;
                }
                else
                {
                    if (fields.Sequence != last + 1)
                    {
                        problems.Add(fields.Sequence > last + 1
                            ? $"{where}: seq {fields.Sequence} follows seq {last}: events {last + 1}..{fields.Sequence - 1} are missing"
                            : $"{where}: seq {fields.Sequence} follows seq {last}: events are repeated or out of order");
                        fileBroken = true;
                    }
                    else if (!fields.Prev.AsSpan().SequenceEqual(previousHash))
                    {
                        problems.Add($"{where}: seq {fields.Sequence}: prev does not match the hash of seq {last}; an event before it was edited, removed or inserted");
                        fileBroken = true;
                    }
                }
                if (fields.Type == "audit_start")
                {
                    if (previousHash is not null && lastType != "audit_stop")
                    {
                        warnings.Add($"{where}: seq {fields.Sequence}: audit_start follows seq {last} ({lastType}), not audit_stop: the run before ended without shutting down (crash, SIGKILL, out of memory); its last batch may be lost");
                    }
                    else if (fields.UncleanStop)
                    {
                        warnings.Add($"{where}: seq {fields.Sequence}: audit_start says the run before ended without audit_stop (last seq {fields.LastSequence}): it did not shut down (crash, SIGKILL, out of memory); its last batch may be lost");
                    }
                }
                previousHash = claimed.ToArray();
                last = fields.Sequence;
                lastType = fields.Type;
                lastWhere = where;
                events++;
                if (fields.Type == "audit_gap")
                {
                    dropped += fields.Dropped;
                    notes.Add($"{where}: seq {fields.Sequence}: {fields.Dropped} records were dropped (the audit queue was full)");
                }
                else if (fields.Type == "audit_sink_failure")
                {
                    sinkFailures++;
                    notes.Add($"{where}: seq {fields.Sequence}: a sink failed to keep some events (see the event)");
                }
            }
        }
        if (events == 0 && problems.Count == 0)
        {
            problems.Add("no audit events found");
        }
        if (events > 0 && lastType != "audit_stop")
        {
            warnings.Add($"{lastWhere}: the trail ends without audit_stop at seq {last}: the gateway is still running, or it died without shutting down; its last batch may be lost");
        }
        return Result();

        AuditVerifyResult Result() => new(ordered.Count, events, first, last, dropped, sinkFailures, algorithm, problems, notes, warnings);
    }

    private record struct Fields(long Sequence, string? Type, byte[] Prev, string? Chain, long Dropped, bool UncleanStop, long LastSequence);

    private static bool TryReadFields(ReadOnlySpan<byte> eventJson, out Fields fields)
    {
        fields = new Fields(0, null, [], null, 0, false, 0);
        var reader = new Utf8JsonReader(eventJson);
        try
        {
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                return false;
            }
            var hasSequence = false;
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                var name = reader.GetString();
                reader.Read();
                switch (name)
                {
                    case "seq" when reader.TokenType == JsonTokenType.Number:
                        hasSequence = reader.TryGetInt64(out var sequence);
                        fields.Sequence = sequence;
                        break;
                    case "type" when reader.TokenType == JsonTokenType.String:
                        fields.Type = reader.GetString();
                        break;
                    case "chain" when reader.TokenType == JsonTokenType.String:
                        fields.Chain = reader.GetString();
                        break;
                    case "dropped" when reader.TokenType == JsonTokenType.Number:
                        fields.Dropped = reader.GetInt64();
                        break;
                    case "uncleanStop" when reader.TokenType is JsonTokenType.True or JsonTokenType.False:
                        fields.UncleanStop = reader.GetBoolean();
                        break;
                    case "lastSequence" when reader.TokenType == JsonTokenType.Number:
                        fields.LastSequence = reader.GetInt64();
                        break;
                    case "prev" when reader.TokenType == JsonTokenType.String:
                        fields.Prev = Convert.FromHexString(reader.GetString()!);
                        break;
                    default:
                        reader.Skip();
                        break;
                }
            }
            return hasSequence && fields.Type is not null && fields.Prev.Length == AuditChain.HashBytes;
        }
        catch (Exception ex) when (ex is JsonException or FormatException or InvalidOperationException)
        {
            return false;
        }
    }

    private static long FirstSequence(string file)
    {
        foreach (var line in ReadLines(file))
        {
            return AuditChain.TryReadSequence(line, out var sequence) ? sequence : long.MaxValue;
        }
        return long.MaxValue;
    }

    /// <summary>The file's lines as bytes, without their newline; a last line without one is returned too.</summary>
    private static IEnumerable<byte[]> ReadLines(string file)
    {
        using var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1 << 16);
        var buffer = new byte[1 << 16];
        var pending = new MemoryStream();
        int read;
        while ((read = stream.Read(buffer, 0, buffer.Length)) > 0)
        {
            var start = 0;
            for (var i = 0; i < read; i++)
            {
                if (buffer[i] != (byte)'\n')
                {
                    continue;
                }
                pending.Write(buffer, start, i - start);
                yield return pending.ToArray();
                pending.SetLength(0);
                start = i + 1;
            }
            pending.Write(buffer, start, read - start);
        }
        if (pending.Length > 0)
        {
            yield return pending.ToArray();
        }
    }
}
