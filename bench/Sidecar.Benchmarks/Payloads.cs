using System.Buffers;
using System.Globalization;
using System.Text;

namespace Sidecar.Benchmarks;

/// <summary>
/// JSON-RPC messages the benchmarks scan and decide. Built once; every benchmark reads the same bytes.
/// </summary>
public static class Payloads
{
    /// <summary>The tool every typical call targets (governed by a 2-condition, 1-limit rule in <see cref="Policies"/>).</summary>
    public const string TypicalTool = "send_request";

    /// <summary>
    /// A typical MCP <c>tools/call</c> (~300 bytes): numeric id, <c>params.name</c>, <c>params.arguments</c> with a URL,
    /// an HTTP method, a small headers object and a number, and <c>params._meta.progressToken</c>.
    /// </summary>
    public static readonly byte[] TypicalCall = Encoding.UTF8.GetBytes(
        """{"jsonrpc":"2.0","id":1287,"method":"tools/call","params":{"name":"send_request","arguments":{"url":"https://api.example.com/v2/orders?status=open&limit=50","method":"GET","headers":{"Accept":"application/json","X-Request-Id":"5f0c6a2e-9b7d-4f1a-8e3c-2d9b7a6c1e04"},"timeout_ms":5000},"_meta":{"progressToken":"pt-6f9a1c"}}}""");

    /// <summary>The typical call with its tool name written <c>send\u005frequest</c> (unescapes to the same name).</summary>
    public static readonly byte[] EscapedNameCall = Encoding.UTF8.GetBytes(
        """{"jsonrpc":"2.0","id":1287,"method":"tools/call","params":{"name":"send\u005frequest","arguments":{"url":"https://api.example.com/v2/orders?status=open&limit=50","method":"GET","headers":{"Accept":"application/json","X-Request-Id":"5f0c6a2e-9b7d-4f1a-8e3c-2d9b7a6c1e04"},"timeout_ms":5000},"_meta":{"progressToken":"pt-6f9a1c"}}}""");

    /// <summary>A ~4 KB <c>tools/call</c>: a POST whose <c>arguments.body</c> is an order with 42 line items.</summary>
    public static readonly byte[] LargeCall = BuildLargeCall();

    /// <summary>The <c>arguments</c> object of <see cref="TypicalCall"/> (~170 bytes), as the audit writer gets it.</summary>
    public static readonly byte[] TypicalArguments = Encoding.UTF8.GetBytes(
        """{"url":"https://api.example.com/v2/orders?status=open&limit=50","method":"GET","headers":{"Accept":"application/json","X-Request-Id":"5f0c6a2e-9b7d-4f1a-8e3c-2d9b7a6c1e04"},"timeout_ms":5000}""");

    /// <summary>A ~4 KB <c>arguments</c> object of ordinary prose (a ticket's notes), every string under 256 chars.</summary>
    public static readonly byte[] ProseArguments = BuildProseArguments(withSecrets: false);

    /// <summary><see cref="ProseArguments"/> with four notes carrying a credential inside the text.</summary>
    public static readonly byte[] ProseArgumentsWithSecrets = BuildProseArguments(withSecrets: true);

    /// <summary>The typical call as one segment (what a pipe hands over most of the time).</summary>
    public static readonly ReadOnlySequence<byte> TypicalSingleSegment = new(TypicalCall);

    /// <summary>The typical call split every <see cref="SegmentSize"/> bytes (tokens, including the tool name, straddle segments).</summary>
    public static readonly ReadOnlySequence<byte> TypicalMultiSegment = Split(TypicalCall, SegmentSize);

    public const int SegmentSize = 64;

    private const int LargeCallItems = 42;

    private static byte[] BuildLargeCall()
    {
        var sb = new StringBuilder(4200);
        // Single quotes keep the fixture readable; they become double quotes below.
        sb.Append("{'jsonrpc':'2.0','id':90211,'method':'tools/call','params':{'name':'send_request','arguments':{");
        sb.Append("'url':'https://api.example.com/v2/orders','method':'POST',");
        sb.Append("'headers':{'Accept':'application/json','Content-Type':'application/json',");
        sb.Append("'X-Request-Id':'0b8e1f9c-3a4d-4e2b-9c7f-6a5d4e3c2b1a','Idempotency-Key':'ord-2024-11-30-000871'},");
        sb.Append("'body':{'customer':{'id':'cus_8H2kLm41','email':'ops@example.com','tier':'gold'},'currency':'EUR','items':[");
        for (var i = 0; i < LargeCallItems; i++)
        {
            sb.Append(i == 0 ? "" : ",").Append(CultureInfo.InvariantCulture,
                $"{{'sku':'SKU-{10400 + (i * 37)}','qty':{(i % 5) + 1},'unit_price':{12.5 + i:0.00},'note':'line {i}, gift-wrapped: no'}}");
        }
        sb.Append("],'shipping':{'method':'express','address':{'line1':'221B Baker Street','city':'London','postcode':'NW1 6XE','country':'GB'}}},");
        sb.Append("'timeout_ms':15000},'_meta':{'progressToken':'pt-large-01'}}}");
        sb.Replace('\'', '"');
        return Encoding.UTF8.GetBytes(sb.ToString());
    }

    // In their own class: Payloads' static fields are initialized in order, and the fixtures above need these first.
    private static class Prose
    {
        public static readonly string[] Notes =
        [
            "Customer reports that the nightly export to the warehouse stopped at 02:10 on Tuesday; the job log shows a timeout after 30 seconds and then three retries, each one slower than the last.",
            "We checked the dashboard at https://status.example.com/incidents and nothing was posted there. The on-call engineer was paged twice but the alert cleared itself before anyone looked.",
            "The export reads from the replica, which was about 40 minutes behind at the time. That alone would not break the job, but it explains why the first retry saw stale order totals.",
            "Next step: ask the database team whether the replica lag was planned maintenance or a failover. If it was a failover, the runbook says we should have switched the export to the primary.",
            "The customer is on the gold tier, so the contract promises a response within four hours and a fix or workaround within two business days. We are well inside both windows for now.",
            "Attached are the last 200 lines of the export log, the cron entry and the current retry settings. Nothing in the config changed since the release on the 14th, according to the audit trail.",
            "One odd detail: the job ran as the service account, not as the batch user, which suggests somebody started it by hand from the admin console instead of waiting for the schedule.",
            "Talked to Priya from the platform team. She thinks the bearer of bad news here is the new connection pool limit, which was lowered from 50 to 20 during last week's cost review.",
            "With only 20 connections the export competes with the reporting jobs that start at 02:00. A simple test would be to move the export to 03:30 for a few nights and watch the timings.",
            "The customer asked whether any data was lost. As far as we can tell the answer is no: the export is idempotent and the warehouse only accepts complete batches, never half of one.",
            "Still, they want a written summary for their own records by Friday, including the timeline, the root cause once we know it, and what we will change so that it does not happen again.",
            "Draft timeline: 02:00 reporting jobs start, 02:04 export starts, 02:10 first timeout, 02:31 last retry fails, 06:45 customer notices the missing data, 07:20 ticket opened by their ops team.",
            "A basic question nobody could answer yet is why the alert cleared. Maybe the health check only looks at whether the process is alive, not whether it finished the batch it started.",
            "If that is the case we should add a freshness check to the warehouse side as well: the newest row should never be more than 26 hours old, and a page should go out when it is older.",
            "The session token for the admin console expires after eight hours, so whoever started the job by hand must have logged in after 18:00 the evening before. The login history will show who.",
            "Action items so far: confirm the replica lag cause, review the pool limit, add the freshness check, move the schedule as an experiment, and write the summary for the customer by Friday.",
            "Nobody should change the retry settings until we know more. Longer timeouts would only hide the contention, and more retries would make the reporting jobs slower for everybody else.",
            "For reference, the export has run without problems for 411 nights in a row before this, so whatever happened is new, and most likely tied to one of the changes from the last two weeks.",
            "Update from the database team: the lag was caused by a long-running vacuum on the orders table, started manually during the cost review to reclaim disk space before the resize.",
            "That fits the timeline well. We will ask them to schedule such maintenance outside of the 01:00 to 04:00 window and to announce it in the shared channel, as the runbook already asks.",
        ];

        public static readonly string[] Secrets =
        [
            "Retried by hand with token=sk-live-4f9a2c7e1b8d6a3f0e5c9b2d and the job went through.",
            "The console sent Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiYXRjaCIsImV4cCI6MTczMjY0MDAwMH0.4pO2o1cC1sU8k3wq0Qe7ZlXbA9vR6yT2nH5mJ8dK0fE on every request.",
            "The export connects with postgres://export:Wh1teRabb1t!@replica-2.db.internal:5432/orders according to the job log.",
            "Someone pasted ghp_Z8x1Qm4Lr7Tp2Vb9Nc6Kd3Hs5Jf0Wg1Ya8Ue into the shared channel; it has been revoked.",
        ];
    }

    private static byte[] BuildProseArguments(bool withSecrets)
    {
        var sb = new StringBuilder(4400);
        sb.Append("{'ticket':'OPS-20931','title':'Nightly warehouse export stopped at 02:10','notes':[");
        for (var i = 0; i < Prose.Notes.Length; i++)
        {
            var note = Prose.Notes[i];
            if (withSecrets && i % 5 == 2)
            {
                // The note's start, then the secret sentence: still under 256 chars.
                var secret = Prose.Secrets[i / 5];
                note = string.Concat(note.AsSpan(0, Math.Min(note.Length, 250 - secret.Length)).TrimEnd(), " ", secret);
            }
            sb.Append(i == 0 ? "" : ",").Append('\'').Append(note.Replace('\'', '`')).Append('\'');
        }
        sb.Append("],'priority':'high','assignee':'ops-oncall'}");
        sb.Replace('\'', '"').Replace('`', '\'');
        return Encoding.UTF8.GetBytes(sb.ToString());
    }

    /// <summary>Splits <paramref name="data"/> into a chain of segments of at most <paramref name="size"/> bytes.</summary>
    public static ReadOnlySequence<byte> Split(byte[] data, int size)
    {
        var first = new Segment(data.AsMemory(0, Math.Min(size, data.Length)), 0);
        var last = first;
        for (var offset = size; offset < data.Length; offset += size)
        {
            last = last.Append(data.AsMemory(offset, Math.Min(size, data.Length - offset)));
        }
        return new ReadOnlySequence<byte>(first, 0, last, last.Memory.Length);
    }

    /// <summary>The smallest <see cref="ReadOnlySequenceSegment{T}"/> that chains buffers.</summary>
    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, long runningIndex)
        {
            Memory = memory;
            RunningIndex = runningIndex;
        }

        public Segment Append(ReadOnlyMemory<byte> memory)
        {
            var next = new Segment(memory, RunningIndex + Memory.Length);
            Next = next;
            return next;
        }
    }
}
