using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Text;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Sidecar.Configuration;

namespace Sidecar.Upstreams;

/// <summary>
/// One stdio upstream session: a server process of its own, spoken to with newline-delimited JSON-RPC.
/// </summary>
/// <remarks>
/// <para>
/// <b>From the server</b>: stdout is split on <c>\n</c> (a trailing <c>\r</c> is dropped); each non-blank line is one
/// <see cref="UpstreamEventKind.Message"/> event (correlation 0) holding exactly the line's bytes, in a fresh array.
/// A line longer than <see cref="GatewayLimits.MaxMessageBytes"/> is skipped without being buffered, with a warning.
/// stderr lines go to the logger (Information, prefixed with the server name), never to the events.
/// </para>
/// <para>
/// <b>To the server</b>: <see cref="SendAsync"/> copies the message into a pooled buffer, replaces every raw
/// <c>\n</c> and <c>\r</c> byte with a space (valid JSON has them only as insignificant whitespace; left alone, a
/// pretty-printed message would reach the server as several lines, i.e. several messages) and queues it with its
/// <c>\n</c> for one writer loop. Concurrent sends never interleave, and callers take no lock: they wait only when
/// the queue (<see cref="OutgoingCapacity"/> messages) is full because the server is not reading its stdin.
/// A message that cannot be written (the process went away) is reported as <see cref="UpstreamEventKind.SendFailed"/>.
/// </para>
/// <para>
/// <b>Events</b>: <see cref="Events"/> is bounded (<see cref="UpstreamEventSink.Capacity"/>, 1024 events) and has one
/// reader. When it is full the transport waits and stops reading from the server, which then waits too
/// (backpressure); nothing is dropped for being slow. Read it independently of sending. Each payload is a fresh
/// array the reader may keep. After the last event the channel completes, and <see cref="Completion"/> says why.
/// </para>
/// <para>
/// <b>Ending</b>: when the process exits, <see cref="Completion"/> faults with
/// <c>UpstreamException("upstream process exited with code N")</c> (after the output it wrote before exiting has been
/// delivered), the events channel completes and sends throw <see cref="UpstreamException"/>.
/// <see cref="DisposeAsync"/> closes stdin, waits up to 2 s for the process to exit, then kills its whole process
/// tree, including children that were re-parented when their parent exited (Linux); Completion then succeeds.
/// </para>
/// </remarks>
public sealed class StdioUpstreamConnection : IUpstreamConnection
{
    /// <summary>Messages queued for stdin before senders wait.</summary>
    public const int OutgoingCapacity = 256;

    private const int MaxLoggedLineChars = 4096;
    private static readonly TimeSpan s_exitGrace = TimeSpan.FromSeconds(2);
    private static readonly TimeSpan s_drainTimeout = TimeSpan.FromSeconds(2);

    private readonly string _name;
    private readonly Process _process;
    private readonly GatewayLimits _limits;
    private readonly ILogger _logger;
    private readonly UpstreamEventSink _sink = new();
    private readonly Channel<OutgoingMessage> _outgoing = Channel.CreateBounded<OutgoingMessage>(new BoundedChannelOptions(OutgoingCapacity)
    {
        FullMode = BoundedChannelFullMode.Wait,
        SingleReader = true,
        SingleWriter = false,
        AllowSynchronousContinuations = true, // the writer loop runs on the sender's thread (a pipe write, no thread hand-off)
    });
    private readonly Stream _stdin;
    private readonly Task _writer;
    private readonly Task _stdoutReader;
    private readonly Task _stderrReader;
    private readonly Task _monitor;
    private UpstreamException? _failure;
    private int _disposing;
    private Task? _disposal;


    internal StdioUpstreamConnection(string name, Process process, GatewayLimits limits, ILogger logger)
    {
        _name = name;
        _process = process;
        _limits = limits;
        _logger = logger;
        ProcessId = process.Id;
        _stdin = process.StandardInput.BaseStream;
        var stdout = process.StandardOutput.BaseStream;
        var stderr = process.StandardError.BaseStream;

        _writer = Task.Run(WriteLoopAsync);
        _stdoutReader = Task.Run(() => ReadLinesAsync(stdout, _limits.MaxMessageBytes, OnStdoutLine, OnStdoutLineTooLong, _sink.Lifetime));
        _stderrReader = Task.Run(() => ReadLinesAsync(stderr, _limits.MaxMessageBytes, OnStderrLine, static () => { }, _sink.Lifetime));
        _monitor = Task.Run(MonitorAsync);
    }

    /// <summary>The server process's id.</summary>
    public int ProcessId { get; }

    public string Transport => "stdio";

    public ChannelReader<UpstreamEvent> Events => _sink.Reader;

    public Task Completion => _sink.Completion;

    public ValueTask SendAsync(ReadOnlySequence<byte> message, long correlation, CancellationToken cancellationToken)
    {
        if (_sink.IsClosed || Volatile.Read(ref _failure) is not null || Volatile.Read(ref _disposing) != 0)
        {
            return ValueTask.FromException(ClosedException());
        }
        if (message.Length > _limits.MaxMessageBytes)
        {
            return ValueTask.FromException(new ArgumentException($"message of {message.Length} bytes exceeds the {_limits.MaxMessageBytes}-byte limit", nameof(message)));
        }
        var length = (int)message.Length;
        var buffer = ArrayPool<byte>.Shared.Rent(length + 1);
        message.CopyTo(buffer);
        // One message, one line: a raw CR or LF can only be insignificant whitespace in valid JSON, and must not
        // reach the server as a line break (it would split the message in two).
        var rest = buffer.AsSpan(0, length);
        int at;
        while ((at = rest.IndexOfAny((byte)'\n', (byte)'\r')) >= 0)
        {
            rest[at] = (byte)' ';
            rest = rest[(at + 1)..];
        }
        buffer[length] = (byte)'\n';

        var item = new OutgoingMessage(buffer, length + 1, correlation);
        if (_outgoing.Writer.TryWrite(item))
        {
            return default;
        }
        return SendSlowAsync(item, cancellationToken);
    }

    private ValueTask SendSlowAsync(OutgoingMessage item, CancellationToken cancellationToken)
        => OutgoingMessage.WriteSlowAsync(_outgoing.Writer, item, ClosedException, cancellationToken);

    private UpstreamException ClosedException() =>
        Volatile.Read(ref _failure) is { } failure
            ? new UpstreamException(failure.Message, failure)
            : _sink.ClosedException();

    private async Task WriteLoopAsync()
    {
        var reader = _outgoing.Reader;
        var broken = false;
        try
        {
            // Runs until the queue is completed (failure or disposal), so every queued buffer is returned.
            while (await reader.WaitToReadAsync(CancellationToken.None).ConfigureAwait(false))
            {
                while (reader.TryRead(out var item))
                {
                    if (!broken)
                    {
                        try
                        {
                            await _stdin.WriteAsync(item.Buffer.AsMemory(0, item.Length), CancellationToken.None).ConfigureAwait(false);
                        }
                        catch (Exception ex) when (ex is IOException or ObjectDisposedException or OperationCanceledException)
                        {
                            broken = true;
                            _ = OnStdinBrokenAsync();
                        }
                    }
                    ArrayPool<byte>.Shared.Return(item.Buffer);
                    if (broken)
                    {
                        FailSend(item.Correlation, "the upstream process is not reading its stdin any more");
                    }
                }
                if (!broken)
                {
                    try
                    {
                        await _stdin.FlushAsync(CancellationToken.None).ConfigureAwait(false);
                    }
                    catch (Exception ex) when (ex is IOException or ObjectDisposedException or OperationCanceledException)
                    {
                        broken = true;
                        _ = OnStdinBrokenAsync();
                    }
                }
            }
        }
        catch (Exception ex) when (ex is ChannelClosedException or OperationCanceledException)
        {
        }
    }

    private void FailSend(long correlation, string reason)
    {
        UpstreamLog.SendFailed(_logger, _name, correlation, reason);
        _sink.TryEmit(new UpstreamEvent(UpstreamEventKind.SendFailed, default, correlation, reason));
    }

    /// <summary>stdin broke: normally the process is exiting (the monitor reports it); if it lives on, end it here.</summary>
    private async Task OnStdinBrokenAsync()
    {
        if (Volatile.Read(ref _disposing) != 0)
        {
            return;
        }
        using var grace = new CancellationTokenSource(s_exitGrace);
        try
        {
            await _process.WaitForExitAsync(grace.Token).ConfigureAwait(false);
            return;
        }
        catch (OperationCanceledException)
        {
        }
        await FailAsync(new UpstreamException("upstream process closed its stdin")).ConfigureAwait(false);
        KillTree();
    }

    private async Task MonitorAsync()
    {
        try
        {
            await _process.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
        }
        catch (InvalidOperationException)
        {
        }
        // Deliver what the process wrote before it exited.
        try
        {
            await Task.WhenAll(_stdoutReader, _stderrReader).WaitAsync(s_drainTimeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
        }
        var code = ExitCode();
        UpstreamLog.ProcessExited(_logger, _name, ProcessId, code);
        if (Volatile.Read(ref _disposing) != 0)
        {
            _sink.Close(null);
            return;
        }
        await FailAsync(new UpstreamException($"upstream process exited with code {code}")).ConfigureAwait(false);
    }

    private async Task FailAsync(UpstreamException reason)
    {
        if (Interlocked.CompareExchange(ref _failure, reason, null) is not null)
        {
            return;
        }
        UpstreamLog.ConnectionFailed(_logger, _name, reason.Message);
        _outgoing.Writer.TryComplete();
        try
        {
            await _writer.WaitAsync(s_drainTimeout).ConfigureAwait(false); // fails what is still queued
        }
        catch (TimeoutException)
        {
        }
        _sink.Close(reason);
    }

    private int ExitCode()
    {
        try
        {
            return _process.ExitCode;
        }
        catch (InvalidOperationException)
        {
            return -1;
        }
    }

    private async ValueTask OnStdoutLine(ReadOnlySequence<byte> line) =>
        await _sink.EmitAsync(new UpstreamEvent(UpstreamEventKind.Message, line.ToArray(), 0)).ConfigureAwait(false);

    private void OnStdoutLineTooLong() => UpstreamLog.MessageTooLarge(_logger, _name, Transport, _limits.MaxMessageBytes);

    private ValueTask OnStderrLine(ReadOnlySequence<byte> line)
    {
        if (_logger.IsEnabled(LogLevel.Information))
        {
            var text = Encoding.UTF8.GetString(line.Length > MaxLoggedLineChars ? line.Slice(0, MaxLoggedLineChars) : line);
            UpstreamLog.StderrLine(_logger, _name, text);
        }
        return default;
    }

    /// <summary>
    /// Reads <c>\n</c>-terminated lines (a trailing <c>\r</c> dropped) and hands each non-blank one to
    /// <paramref name="onLine"/>; lines longer than <paramref name="maxLineBytes"/> are skipped, never buffered whole.
    /// </summary>
    internal static async Task ReadLinesAsync(Stream stream, int maxLineBytes, Func<ReadOnlySequence<byte>, ValueTask> onLine,
        Action onTooLong, CancellationToken cancellationToken)
    {
        var reader = PipeReader.Create(stream, new StreamPipeReaderOptions(bufferSize: 64 * 1024, minimumReadSize: 16 * 1024, leaveOpen: true));
        var skipping = false;
        long scanned = 0; // bytes at the start of the buffer already known to hold no '\n'
        try
        {
            while (true)
            {
                var result = await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
                var buffer = result.Buffer;
                while (buffer.Slice(scanned).PositionOf((byte)'\n') is { } newline)
                {
                    var line = buffer.Slice(0, newline);
                    buffer = buffer.Slice(buffer.GetPosition(1, newline));
                    scanned = 0;
                    if (skipping)
                    {
                        skipping = false; // the tail of an over-long line
                        continue;
                    }
                    if (line.Length > maxLineBytes)
                    {
                        onTooLong();
                        continue;
                    }
                    line = TrimCr(line);
                    if (!IsBlank(line))
                    {
                        await onLine(line).ConfigureAwait(false);
                    }
                }

                if (!skipping && buffer.Length > maxLineBytes)
                {
                    skipping = true;
                    onTooLong();
                }
                if (skipping)
                {
                    buffer = buffer.Slice(buffer.End);
                }
                scanned = buffer.Length;

                if (result.IsCompleted)
                {
                    // The stream ended: an unterminated last line still counts.
                    var last = TrimCr(buffer);
                    if (!skipping && !IsBlank(last))
                    {
                        await onLine(last).ConfigureAwait(false);
                    }
                    return;
                }
                reader.AdvanceTo(buffer.Start, buffer.End);
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or IOException or ObjectDisposedException)
        {
            // The connection is closing, or the pipe broke: the monitor reports why.
        }
        finally
        {
            await reader.CompleteAsync().ConfigureAwait(false);
        }
    }

    private static ReadOnlySequence<byte> TrimCr(ReadOnlySequence<byte> line)
    {
        if (line.IsEmpty)
        {
            return line;
        }
        var lastPosition = line.GetPosition(line.Length - 1);
        return line.Slice(lastPosition).FirstSpan[0] == (byte)'\r' ? line.Slice(0, line.Length - 1) : line;
    }

    private static bool IsBlank(ReadOnlySequence<byte> line)
    {
        foreach (var segment in line)
        {
            if (segment.Span.IndexOfAnyExcept((byte)' ', (byte)'\t', (byte)'\r') >= 0)
            {
                return false;
            }
        }
        return true;
    }

    private void KillTree()
    {
        try
        {
            _process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
            // Already exited.
        }
        catch (Exception ex) when (ex is System.ComponentModel.Win32Exception or NotSupportedException or AggregateException)
        {
            UpstreamLog.KillFailed(_logger, _name, ProcessId, ex.Message);
        }
    }

    public ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposing, 1) == 0)
        {
            _disposal = DisposeCoreAsync();
        }
        return new ValueTask(_disposal!);
    }

    private async Task DisposeCoreAsync()
    {
        // 1. No more sends; let the writer flush what is queued (bounded: the server may not be reading).
        _outgoing.Writer.TryComplete();
        try
        {
            await _writer.WaitAsync(TimeSpan.FromSeconds(1)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
        }

        // 2. Remember the whole tree now: children re-parented after their parent exits can't be found later.
        var tree = HasExited() ? [] : ProcessTree.Descendants(ProcessId);

        // 3. Close stdin (the polite "please exit") and give the process a moment.
        try
        {
            _stdin.Dispose();
        }
        catch (IOException)
        {
        }
        using (var grace = new CancellationTokenSource(s_exitGrace))
        {
            try
            {
                await _process.WaitForExitAsync(grace.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                UpstreamLog.ProcessKilled(_logger, _name, ProcessId, (int)s_exitGrace.TotalMilliseconds);
                KillTree();
            }
        }

        // 4. Whatever the tree left behind (daemonised children, or children of a root that exited by itself).
        await ProcessTree.KillSurvivorsAsync(tree, TimeSpan.FromSeconds(1)).ConfigureAwait(false);

        try
        {
            await _monitor.WaitAsync(s_drainTimeout + s_drainTimeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
        }
        _sink.Close(null);
        try
        {
            await Task.WhenAll(_stdoutReader, _stderrReader).WaitAsync(s_drainTimeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
        }
        _process.Dispose();
    }

    private bool HasExited()
    {
        try
        {
            return _process.HasExited;
        }
        catch (InvalidOperationException)
        {
            return true;
        }
    }

    public override string ToString() => $"{_name} (stdio, pid {ProcessId})";
}
