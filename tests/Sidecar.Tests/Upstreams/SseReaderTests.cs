using System.Text;
using Sidecar.Upstreams;

namespace Sidecar.Tests.Upstreams;

public class SseReaderTests
{
    /// <summary>A stream that hands out at most <c>chunk</c> bytes per read: events and lines straddle reads.</summary>
    private sealed class ChunkedStream(byte[] data, int chunk) : MemoryStream(data)
    {
        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
            => base.ReadAsync(buffer[..Math.Min(buffer.Length, chunk)], cancellationToken);
    }

    private static async Task<List<string>> ReadAll(string text, int chunk, int maxEventBytes = 1024)
    {
        var reader = new SseReader(new ChunkedStream(Encoding.UTF8.GetBytes(text), chunk), maxEventBytes);
        var events = new List<string>();
        await using (reader)
        {
            for (var i = 0; i < 10_000; i++)
            {
                var e = await reader.ReadAsync(CancellationToken.None);
                switch (e.Kind)
                {
                    case SseReadKind.End:
                        return events;
                    case SseReadKind.TooLarge:
                        events.Add("<too large>");
                        break;
                    default:
                        events.Add((e.Type ?? "message") + ":" + Encoding.UTF8.GetString(e.Data!));
                        break;
                }
            }
        }
        throw new InvalidOperationException("the stream never ended");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(4096)]
    public async Task Events_are_the_same_however_the_bytes_arrive(int chunk)
    {
        var text = "\uFEFF: a comment\r\nevent: message\r\ndata: {\"a\":1}\r\n\r\n"
                   + "data: line one\ndata: line two\n\n"
                   + "event: endpoint\rdata: /message?x=1\r\r"
                   + "id: 7\nretry: 1500\ndata: {}\n\n"
                   + "data: unterminated";
        var events = await ReadAll(text, chunk);
        Assert.Equal(["message:{\"a\":1}", "message:line one\nline two", "endpoint:/message?x=1", "message:{}"], events);
    }

    [Fact]
    public async Task Id_and_retry_are_remembered()
    {
        var reader = new SseReader(new ChunkedStream("id: abc\nretry: 250\ndata: x\n\n"u8.ToArray(), 2), 1024);
        await using (reader)
        {
            var e = await reader.ReadAsync(CancellationToken.None);
            Assert.Equal(SseReadKind.Event, e.Kind);
            Assert.Equal("abc", reader.LastEventId);
            Assert.Equal(250, reader.RetryMilliseconds);
            Assert.Equal(SseReadKind.End, (await reader.ReadAsync(CancellationToken.None)).Kind);
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(4096)]
    public async Task Priming_events_with_empty_data_are_not_dispatched_but_set_the_id_and_retry(int chunk)
    {
        // MCP 2025-11-25 (SEP-1699): a server primes each stream with an id and empty data, maybe a retry; keep-alive
        // comments may come at any time. None of them is a message.
        var text = "id: p-0\nretry: 200\ndata: \n\n" + ":\n\n" + ": keep-alive\n\n" + "id: p-1\ndata:\n\n" + "id: p-2\nretry: 300\n\n";
        var reader = new SseReader(new ChunkedStream(Encoding.UTF8.GetBytes(text), chunk), 1024);
        await using (reader)
        {
            Assert.Equal(SseReadKind.End, (await reader.ReadAsync(CancellationToken.None)).Kind);
            Assert.Equal("p-2", reader.LastEventId);
            Assert.Equal(300, reader.RetryMilliseconds);
        }
        Assert.Equal(["message:{}"], await ReadAll("id: 1\ndata:\n\ndata: {}\n\nid: 2\ndata: \n\n", chunk));
    }

    [Fact]
    public async Task The_last_event_id_is_that_of_the_last_whole_event()
    {
        // A stream cut inside an event: its id must not be the one to resume from, or that event would be skipped.
        var reader = new SseReader(new ChunkedStream("id: 1\ndata: {}\n\nid: 2\ndata: {\"half"u8.ToArray(), 5), 1024);
        await using (reader)
        {
            Assert.Equal(SseReadKind.Event, (await reader.ReadAsync(CancellationToken.None)).Kind);
            Assert.Equal("1", reader.LastEventId);
            Assert.Equal(SseReadKind.End, (await reader.ReadAsync(CancellationToken.None)).Kind);
            Assert.Equal("1", reader.LastEventId);
        }
    }

    [Theory]
    [InlineData(7)]
    [InlineData(50_000)]
    public async Task An_event_longer_than_the_first_buffer_is_read_whole(int chunk)
    {
        var big = new string('x', 40_000); // the reader starts with a 16 KB buffer
        var events = await ReadAll($"data: {big}\n\ndata: after\n\n", chunk, maxEventBytes: 100_000);
        Assert.Equal(["message:" + big, "message:after"], events);
    }

    [Theory]
    [InlineData(5)]
    [InlineData(64 * 1024)]
    public async Task Oversized_events_and_lines_are_skipped_and_reported(int chunk)
    {
        var longLine = new string('y', 5000);
        var text = $"data: {longLine}\n\ndata: ok1\n\ndata: {new string('z', 600)}\ndata: {new string('z', 600)}\n\ndata: ok2\n\n";
        var events = await ReadAll(text, chunk, maxEventBytes: 1000);
        Assert.Equal(["<too large>", "message:ok1", "<too large>", "message:ok2"], events);
    }

    [Fact]
    public async Task An_empty_stream_just_ends()
    {
        Assert.Empty(await ReadAll("", 10));
        Assert.Empty(await ReadAll("\uFEFF", 1));
        Assert.Empty(await ReadAll(": only a comment\n\n", 1));
    }

    [Fact]
    public async Task A_pooled_reader_keeps_nothing_of_its_last_stream()
    {
        var pool = new SseReaderPool(1000);
        // A stream that ends mid-event, mid-line, after a CR, with an id, a retry, an event type and an over-long line.
        var messy = $"id: old\nretry: 99\nevent: endpoint\ndata: {new string('q', 2000)}\ndata: half\r";
        var first = pool.Rent(new ChunkedStream(Encoding.UTF8.GetBytes(messy), 7));
        for (var i = 0; i < 100 && (await first.ReadAsync(CancellationToken.None)).Kind != SseReadKind.End; i++)
        {
        }
        pool.Return(first);

        var second = pool.Rent(new ChunkedStream("\ndata: fresh\n\n"u8.ToArray(), 3));
        Assert.Same(first, second);
        Assert.Null(second.LastEventId);
        Assert.Null(second.RetryMilliseconds);
        var e = await second.ReadAsync(CancellationToken.None);
        Assert.Equal(SseReadKind.Event, e.Kind);
        Assert.Null(e.Type);
        Assert.Equal("fresh", Encoding.UTF8.GetString(e.Data!));
        Assert.Equal(SseReadKind.End, (await second.ReadAsync(CancellationToken.None)).Kind);
        pool.Return(second);
    }
}
