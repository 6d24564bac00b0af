using System.Globalization;
using System.Net.Http.Headers;
using Microsoft.Extensions.Logging;
using Sidecar.Configuration;
using Sidecar.Upstreams;

namespace Sidecar.Audit;

/// <summary>
/// POSTs audit batches to a collector as JSONL (<c>application/x-ndjson</c>), spooling them to disk while the
/// collector is down, and never dropping one silently.
/// </summary>
/// <remarks>
/// <para>
/// <b>Writing</b>: <see cref="WriteAsync"/> never waits for the collector. It copies the batch into a bounded in-memory
/// queue (<see cref="MemoryQueueBatches"/> batches, <see cref="MemoryQueueBytes"/> bytes) for one background sender,
/// or, while the sink is spooling, writes it to the spool directory (a file write and a flush to the device, no
/// network). It throws <see cref="AuditSinkException"/> only when the batch cannot be kept: the spool limit would be
/// exceeded or the disk write failed.
/// </para>
/// <para>
/// <b>Sending</b>: each batch is one POST with the configured headers, <c>X-Sidecar-Audit-Sequence: first-last</c>,
/// and <see cref="AuditHttpConfig.Timeout"/> per request. Any 2xx is delivered; anything else (another status, a
/// timeout, a connection error) is retried with exponential backoff from <see cref="InitialRetryDelay"/> to
/// <see cref="MaxRetryDelay"/>, forever: the head batch blocks the ones behind it, so the collector sees them in order.
/// </para>
/// <para>
/// <b>Spooling</b>: on the first failure the sender moves everything queued in memory to the spool, and from then on
/// (also once the memory queue is full) new batches go straight to the spool until it has drained, so order is
/// preserved across memory and disk. Spooled files are sent oldest first and deleted after a 2xx. The limit
/// <see cref="AuditHttpConfig.MaxSpoolBytes"/> counts the memory queue too, so whatever was accepted can always be
/// spooled.
/// </para>
/// <para>
/// <b>Restarts</b>: files a previous run left in the spool directory are delivered first. Delivery is at-least-once:
/// a batch the collector received but whose answer was lost (a timeout, a shutdown mid-request, a crash before the
/// delete) is sent again. Collectors deduplicate with the sequence header; the hash chain makes duplicates harmless.
/// </para>
/// <para>
/// <b>Shutdown</b>: <see cref="FlushAsync"/> keeps delivering until everything is sent or its token fires, then stops
/// the sender and spools what is left in memory. After that the sink still accepts batches, straight into the spool.
/// </para>
/// <para>
/// Header values may be credentials: they are never logged, and are masked in <see cref="LastError"/>. Only state
/// changes are logged (collector down, back, spool drained), never each retry.
/// </para>
/// </remarks>
public sealed class HttpAuditSink : IAuditSink
{
    /// <summary>Batches held in memory before newer ones go to the spool.</summary>
    public const int MemoryQueueBatches = 64;

    /// <summary>Bytes held in memory before newer batches go to the spool.</summary>
    public const long MemoryQueueBytes = 8L * 1024 * 1024;

    /// <summary>The name of the header carrying the batch's sequence range, <c>first-last</c>.</summary>
    public const string SequenceHeader = "X-Sidecar-Audit-Sequence";

    public static readonly TimeSpan InitialRetryDelay = TimeSpan.FromMilliseconds(250);
    public static readonly TimeSpan MaxRetryDelay = TimeSpan.FromSeconds(30);

    /// <summary>Headers the sink sets itself; a configured header with one of these names is ignored.</summary>
    private static readonly string[] s_reserved =
    [
        "Content-Type", "Content-Length", "Content-Encoding", "Transfer-Encoding", "Host", "Connection", "Expect", "TE", SequenceHeader,
    ];

    private readonly AuditHttpConfig _config;
    private readonly ILogger _logger;
    private readonly AuditSpool _spool;
    private readonly HttpClient _client;
    private readonly KeyValuePair<string, string>[] _headers;
    private readonly SecretMask _secrets = new();
    private readonly string _safeUrl;
    private readonly Lock _gate = new();
    private readonly SemaphoreSlim _wake = new(0);
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _sender;

    // Under _gate. Order invariant: every batch in _memory is older than every batch in _spooled.
    private readonly LinkedList<PendingBatch> _memory = new();
    private readonly PriorityQueue<SpoolEntry, long> _spooled = new();
    private long _memoryBytes;
    private long _spooledBytes;
    private long _reservedBytes; // spool writes in progress
    private int _pendingSpoolWrites;
    private long _nextOrdinal;
    private bool _spooling; // newer batches go to the spool until it has drained
    private bool _stopped; // the sender is stopped (flushed or disposed): everything goes to the spool
    private TaskCompletionSource? _drained;
    private Task? _stopping;

    // Sender only.
    private bool _collectorDown;
    private bool _spoolReadFailing;
    private long _failedAttemptsAtDown;

    private long _deliveredBatches;
    private long _deliveredEvents;
    private long _failedAttempts;
    private string? _lastError;
    private int _disposed;

    /// <summary>
    /// Opens the spool directory (creating it, locking it, picking up batches a previous run left) and starts the
    /// background sender.
    /// </summary>
    /// <exception cref="AuditSinkException">The spool directory cannot be created, read or locked.</exception>
    public HttpAuditSink(AuditHttpConfig config, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(logger);
        if (config.Timeout <= TimeSpan.Zero && config.Timeout != Timeout.InfiniteTimeSpan)
        {
            throw new ArgumentOutOfRangeException(nameof(config), config.Timeout, "the request timeout must be positive");
        }
        _config = config;
        _logger = logger;
        _safeUrl = HttpUpstream.Describe(config.Url);
        _headers = _secrets.PrepareHeaders(config.Headers, config.Url, s_reserved, name => HttpAuditSinkLog.HeaderIgnored(logger, name));

        _spool = new AuditSpool(config.SpoolDirectory);
        foreach (var entry in _spool.Recovered)
        {
            _spooled.Enqueue(entry, entry.Ordinal);
            _spooledBytes += entry.Bytes;
            _nextOrdinal = entry.Ordinal + 1;
        }
        if (_spooled.Count > 0)
        {
            _spooling = true;
            HttpAuditSinkLog.Recovered(logger, _spooled.Count, _spooledBytes, _spool.Directory);
        }
        if (_spool.Ignored.Count > 0)
        {
            HttpAuditSinkLog.StrayFiles(logger, _spool.Ignored.Count, _spool.Directory, _spool.Ignored[0]);
        }

        // One client for the sink's lifetime: pooled keep-alive connections, renewed every few minutes so a
        // collector behind a DNS name that moves is followed. No redirects (they could carry the credentials
        // elsewhere), no cookies. Proxies come from the environment (HTTPS_PROXY, NO_PROXY), as usual for outbound
        // traffic to a log collector.
        var handler = new SocketsHttpHandler
        {
            AllowAutoRedirect = false,
            UseCookies = false,
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(60),
            PooledConnectionLifetime = TimeSpan.FromMinutes(5),
            ConnectTimeout = config.Timeout,
        };
        _client = new HttpClient(handler, disposeHandler: true) { Timeout = Timeout.InfiniteTimeSpan };
        _sender = Task.Run(SendLoopAsync);
    }

    public string Name => "http";

    /// <summary>Batches the collector accepted (2xx).</summary>
    public long DeliveredBatches => Interlocked.Read(ref _deliveredBatches);

    /// <summary>Events in the batches the collector accepted.</summary>
    public long DeliveredEvents => Interlocked.Read(ref _deliveredEvents);

    /// <summary>POSTs that did not get a 2xx (each retry counts).</summary>
    public long FailedAttempts => Interlocked.Read(ref _failedAttempts);

    /// <summary>Batches waiting in the in-memory queue.</summary>
    public int QueuedBatches
    {
        get
        {
            lock (_gate)
            {
                return _memory.Count;
            }
        }
    }

    /// <summary>Batch files currently in the spool directory.</summary>
    public int SpooledFiles
    {
        get
        {
            lock (_gate)
            {
                return _spooled.Count;
            }
        }
    }

    /// <summary>Bytes currently in the spool directory.</summary>
    public long SpooledBytes
    {
        get
        {
            lock (_gate)
            {
                return _spooledBytes;
            }
        }
    }

    /// <summary>Why the last attempt failed (status or connection error), with header values masked; null if none.</summary>
    public string? LastError => Volatile.Read(ref _lastError);

    /// <summary>Queues or spools a batch; never waits for the collector.</summary>
    /// <exception cref="AuditSinkException">The batch cannot be kept: the spool is full or the disk write failed.</exception>
    public ValueTask WriteAsync(AuditBatch batch, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        var size = batch.Lines.Length;
        if (size == 0)
        {
            return ValueTask.CompletedTask;
        }
        // Copied before taking the lock (the caller's buffer is only valid during this call); wasted only while spooling.
        var copy = batch.Lines.ToArray();
        long ordinal;
        var queueFull = false;
        lock (_gate)
        {
            var held = _memoryBytes + _spooledBytes + _reservedBytes;
            if (held + size > _config.MaxSpoolBytes)
            {
                return ValueTask.FromException(SpoolFull(batch, held));
            }
            ordinal = _nextOrdinal++;
            if (!_spooling && !_stopped)
            {
                if (_memory.Count < MemoryQueueBatches && _memoryBytes + size <= MemoryQueueBytes)
                {
                    _memory.AddLast(new PendingBatch(ordinal, batch.FirstSequence, batch.LastSequence, batch.Count, copy));
                    _memoryBytes += size;
                    Wake();
                    return ValueTask.CompletedTask;
                }
                _spooling = true;
                queueFull = true;
            }
            _reservedBytes += size;
            _pendingSpoolWrites++;
        }
        if (queueFull)
        {
            HttpAuditSinkLog.QueueFull(_logger, MemoryQueueBatches, _spool.Directory);
        }
        return SpoolOrThrow(ordinal, batch.FirstSequence, batch.LastSequence, copy);
    }

    /// <summary>
    /// Delivers everything queued and spooled until <paramref name="cancellationToken"/> fires; then stops the sender
    /// and spools what is left in memory, for the next start. Returns without stopping anything if all is delivered.
    /// </summary>
    /// <exception cref="AuditSinkException">Batches left in memory could not be spooled (they are lost).</exception>
    public async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        Task? drained;
        lock (_gate)
        {
            if (_stopped)
            {
                drained = null;
            }
            else if (IsIdleLocked)
            {
                return;
            }
            else
            {
                _drained ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                drained = _drained.Task;
            }
        }
        if (drained is not null)
        {
            Wake();
            try
            {
                await drained.WaitAsync(cancellationToken).ConfigureAwait(false);
                return;
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                // Time is up: what is left goes to the spool.
            }
        }
        await StopAsync().ConfigureAwait(false);
    }

    /// <summary>Stops the sender (an in-flight POST is abandoned), spools what is left in memory, and releases the spool.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        try
        {
            await StopAsync().ConfigureAwait(false);
        }
        catch (AuditSinkException ex)
        {
            // FlushAsync is where a caller can record the loss; here it can only be reported.
            HttpAuditSinkLog.LostOnShutdown(_logger, ex.Message);
        }
        _client.Dispose();
        _spool.Dispose();
        _stop.Dispose();
        _wake.Dispose();
    }

    public override string ToString() => _config.ToString();

    private bool IsIdleLocked => _memory.Count == 0 && _spooled.Count == 0 && _pendingSpoolWrites == 0;

    private ValueTask SpoolOrThrow(long ordinal, long first, long last, byte[] lines)
    {
        SpoolEntry entry;
        try
        {
            entry = _spool.Write(ordinal, first, last, lines);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            lock (_gate)
            {
                _reservedBytes -= lines.Length;
                _pendingSpoolWrites--;
            }
            Wake();
            return ValueTask.FromException(new AuditSinkException(
                $"http audit sink: cannot spool batch {first}-{last} to {_spool.Directory}: {ex.Message}", ex));
        }
        lock (_gate)
        {
            _reservedBytes -= lines.Length;
            _pendingSpoolWrites--;
            _spooledBytes += entry.Bytes;
            _spooled.Enqueue(entry, entry.Ordinal);
        }
        Wake();
        return ValueTask.CompletedTask;
    }

    private AuditSinkException SpoolFull(AuditBatch batch, long held) => new(string.Create(CultureInfo.InvariantCulture,
        $"http audit sink: batch {batch.FirstSequence}-{batch.LastSequence} ({batch.Lines.Length} bytes) would exceed the spool limit of {_config.MaxSpoolBytes} bytes ({held} bytes undelivered; the collector at {_safeUrl} is not keeping up)"));

    private void Wake()
    {
        if (_wake.CurrentCount == 0)
        {
            _wake.Release();
        }
    }

    /// <summary>Stops the sender once; every caller awaits the same stop.</summary>
    private Task StopAsync()
    {
        lock (_gate)
        {
            _stopped = true;
            return _stopping ??= Task.Run(StopCoreAsync); // not under this lock
        }
    }

    private async Task StopCoreAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        await _sender.ConfigureAwait(false); // it ends on cancellation and throws nothing else
        int remaining;
        lock (_gate)
        {
            remaining = _memory.Count;
        }
        if (remaining > 0 && SpillMemory() is { } failure)
        {
            int lost;
            lock (_gate)
            {
                lost = _memory.Count;
            }
            throw new AuditSinkException($"http audit sink: {lost} undelivered batches could not be spooled on shutdown and are lost: {failure}");
        }
        int files;
        long bytes;
        lock (_gate)
        {
            files = _spooled.Count;
            bytes = _spooledBytes;
        }
        if (files > 0)
        {
            HttpAuditSinkLog.StoppedWithSpool(_logger, files, bytes, _spool.Directory);
        }
    }

    /// <summary>
    /// Moves the memory queue to the spool, newest first: if a write fails, what stays in memory is still older than
    /// everything spooled, so the order holds. Called by the sender, or after it stopped. Returns why it failed, or null.
    /// </summary>
    private string? SpillMemory()
    {
        while (true)
        {
            PendingBatch tail;
            lock (_gate)
            {
                if (_memory.Last is not { } node)
                {
                    return null;
                }
                tail = node.Value;
            }
            SpoolEntry entry;
            try
            {
                entry = _spool.Write(tail.Ordinal, tail.FirstSequence, tail.LastSequence, tail.Lines);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                return ex.Message;
            }
            lock (_gate)
            {
                _memory.RemoveLast();
                _memoryBytes -= tail.Lines.Length;
                _spooledBytes += entry.Bytes;
                _spooled.Enqueue(entry, entry.Ordinal);
            }
        }
    }

    private async Task SendLoopAsync()
    {
        var stop = _stop.Token;
        var delay = InitialRetryDelay;
        while (!stop.IsCancellationRequested)
        {
            try
            {
                if (await SendNextAsync(stop).ConfigureAwait(false))
                {
                    delay = InitialRetryDelay;
                    continue;
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex)
            {
                HttpAuditSinkLog.SenderFailed(_logger, ex);
            }
            try
            {
                await Task.Delay(delay, stop).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            delay = delay * 2 < MaxRetryDelay ? delay * 2 : MaxRetryDelay;
        }
    }

    /// <summary>
    /// Sends the oldest batch (memory first, then the spool), or waits for one. False if an attempt failed and the
    /// caller should back off.
    /// </summary>
    private async Task<bool> SendNextAsync(CancellationToken stop)
    {
        LinkedListNode<PendingBatch>? node;
        SpoolEntry? entry = null;
        var drainedSpool = false;
        TaskCompletionSource? idle = null;
        lock (_gate)
        {
            node = _memory.First;
            if (node is null && !_spooled.TryPeek(out entry, out _))
            {
                entry = null;
                if (_pendingSpoolWrites == 0)
                {
                    // Nothing is left anywhere: batches may go through memory again.
                    drainedSpool = _spooling;
                    _spooling = false;
                    idle = _drained;
                    _drained = null;
                }
            }
        }
        if (node is null && entry is null)
        {
            if (drainedSpool)
            {
                HttpAuditSinkLog.SpoolDrained(_logger);
            }
            idle?.TrySetResult();
            await _wake.WaitAsync(stop).ConfigureAwait(false);
            return true;
        }

        ReadOnlyMemory<byte> body;
        long first, last, count;
        if (node is not null)
        {
            (body, first, last, count) = (node.Value.Lines, node.Value.FirstSequence, node.Value.LastSequence, node.Value.Count);
        }
        else
        {
            (first, last, count) = (entry!.FirstSequence, entry.LastSequence, entry.Count);
            try
            {
                body = await _spool.ReadAsync(entry, stop).ConfigureAwait(false);
                _spoolReadFailing = false;
            }
            catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException)
            {
                HttpAuditSinkLog.SpoolFileMissing(_logger, entry.FileName, first, last);
                RemoveSpooled(entry);
                return true;
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                Volatile.Write(ref _lastError, $"cannot read spooled batch {entry.FileName}: {ex.Message}");
                if (!_spoolReadFailing)
                {
                    _spoolReadFailing = true;
                    HttpAuditSinkLog.SpoolReadFailed(_logger, entry.FileName, ex.Message);
                }
                return false;
            }
        }

        var failure = await PostAsync(body, first, last, stop).ConfigureAwait(false);
        if (failure is not null)
        {
            OnFailed(failure);
            return false;
        }

        Interlocked.Increment(ref _deliveredBatches);
        Interlocked.Add(ref _deliveredEvents, count);
        if (node is not null)
        {
            lock (_gate)
            {
                _memory.Remove(node);
                _memoryBytes -= node.Value.Lines.Length;
            }
        }
        else
        {
            RemoveSpooled(entry!);
            try
            {
                AuditSpool.Delete(entry!);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                HttpAuditSinkLog.DeleteFailed(_logger, entry!.FileName, ex.Message);
            }
        }
        if (_collectorDown)
        {
            _collectorDown = false;
            HttpAuditSinkLog.CollectorBack(_logger, _safeUrl, FailedAttempts - _failedAttemptsAtDown, SpooledFiles);
        }
        return true;
    }

    private void RemoveSpooled(SpoolEntry entry)
    {
        lock (_gate)
        {
            // Only the sender removes, and only the oldest, so the head is this entry.
            _spooled.Dequeue();
            _spooledBytes -= entry.Bytes;
        }
    }

    private void OnFailed(string failure)
    {
        Volatile.Write(ref _lastError, failure);
        var attempts = Interlocked.Increment(ref _failedAttempts);
        bool spill;
        lock (_gate)
        {
            // From now on newer batches go to the spool, behind what is already there.
            _spooling = true;
            spill = _memory.Count > 0;
        }
        if (!_collectorDown)
        {
            _collectorDown = true;
            _failedAttemptsAtDown = attempts - 1;
            HttpAuditSinkLog.CollectorDown(_logger, _safeUrl, failure, _spool.Directory);
        }
        if (spill && SpillMemory() is { } reason)
        {
            int left;
            lock (_gate)
            {
                left = _memory.Count;
            }
            HttpAuditSinkLog.SpillFailed(_logger, left, reason);
        }
    }

    /// <summary>One POST. Returns null on a 2xx, else why not (header values masked).</summary>
    private async Task<string?> PostAsync(ReadOnlyMemory<byte> body, long first, long last, CancellationToken stop)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stop);
        timeout.CancelAfter(_config.Timeout);
        using var request = new HttpRequestMessage(HttpMethod.Post, _config.Url)
        {
            Content = new ReadOnlyMemoryContent(body),
        };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/x-ndjson");
        request.Headers.TryAddWithoutValidation(SequenceHeader, string.Create(CultureInfo.InvariantCulture, $"{first}-{last}"));
        foreach (var (name, value) in _headers)
        {
            request.Headers.TryAddWithoutValidation(name, value);
        }
        try
        {
            // Headers only: the body of the answer does not matter, and reading it could outlast the timeout.
            using var response = await _client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token).ConfigureAwait(false);
            if (response.IsSuccessStatusCode)
            {
                return null;
            }
            var code = (int)response.StatusCode;
            return Redact(string.IsNullOrEmpty(response.ReasonPhrase)
                ? string.Create(CultureInfo.InvariantCulture, $"HTTP {code}")
                : string.Create(CultureInfo.InvariantCulture, $"HTTP {code} {response.ReasonPhrase}"));
        }
        catch (OperationCanceledException) when (!stop.IsCancellationRequested)
        {
            return $"no answer within {HttpUpstream.FormatTimeout(_config.Timeout)}";
        }
        catch (HttpRequestException ex)
        {
            return Redact(HttpUpstream.Reason(ex));
        }
    }

    private string Redact(string text) => _secrets.Redact(text);

    /// <summary>A batch held in memory: its own copy of the lines, and its place in the order.</summary>
    private sealed record PendingBatch(long Ordinal, long FirstSequence, long LastSequence, long Count, byte[] Lines);
}
