using System.Globalization;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Sidecar.Configuration;
using Sidecar.Upstreams;

namespace Sidecar.Approvals;

/// <summary>
/// Tells a webhook of each new pending approval: POSTs the JSON body the caller serialized to
/// <see cref="ApprovalWebhookConfig.Url"/>, in order of arrival, retrying failed deliveries in the background.
/// </summary>
/// <remarks>
/// <para>
/// <b>Enqueueing</b>: <see cref="Enqueue"/> never blocks and never throws. It puts the body in a bounded queue
/// (<see cref="QueueCapacity"/> bodies); when the queue is full the body is dropped, counted in <see cref="Dropped"/>,
/// and <see cref="Enqueue"/> returns false. The webhook is only told: the approval stays pending whether or not the
/// webhook heard of it.
/// </para>
/// <para>
/// <b>Requests</b>: one POST per body, <c>Content-Type: application/json</c>, the configured headers (a header the
/// webhook sets itself, or one that cannot be a request header, is ignored with a warning), a
/// <see cref="DeliveryHeader"/> that names the body (the same on each of its retries, so a receiver can deduplicate),
/// and, when <see cref="ApprovalWebhookConfig.HmacKey"/> is set, <see cref="SignatureHeader"/>
/// <c>sha256=HEX</c>: the lowercase hex HMAC-SHA256 of the body's bytes, keyed with the key's UTF-8 bytes.
/// Any 2xx is delivered; another status, no answer within <see cref="ApprovalWebhookConfig.Timeout"/> (per attempt)
/// or a connection error is a failed attempt. Redirects are not followed (they could carry the headers elsewhere).
/// </para>
/// <para>
/// <b>Order and retries</b>: one background loop makes every body's first attempt, one at a time, in order of
/// arrival. A body whose first attempt fails leaves the line: its retries run as their own task, after
/// <see cref="DefaultRetryBase"/>, then twice as long each time up to <see cref="MaxRetryDelay"/>, for at most
/// <see cref="MaxAttempts"/> attempts in all (counted in <see cref="Retries"/>); then it is given up, counted in
/// <see cref="Failed"/> and logged as an error. So a failing body never holds back later ones for more than one
/// attempt, and a retry may arrive after a later body. At most <see cref="MaxRetrying"/> bodies are being retried at
/// once; while that many are, the loop waits for one of them to finish before the next first attempt (the queue,
/// not the caller, absorbs the wait).
/// </para>
/// <para>
/// <b>Shutdown</b>: <see cref="DisposeAsync"/> stops accepting bodies, lets the loop and the retries go on for a
/// grace period (<see cref="ApprovalWebhookConfig.Timeout"/>, at most <see cref="MaxShutdownGrace"/>), then cancels
/// what is left; bodies not delivered by then are counted in <see cref="Failed"/>.
/// </para>
/// <para>
/// Header values, the key and the bodies are never logged (credentials, user data); the URL is logged without its
/// query, and failure reasons have header values and the URL's query masked.
/// </para>
/// </remarks>
public sealed class ApprovalWebhook : IAsyncDisposable
{
    /// <summary>Bodies held before newer ones are dropped.</summary>
    public const int QueueCapacity = 1024;

    /// <summary>Attempts per body, the first included.</summary>
    public const int MaxAttempts = 6;

    /// <summary>Bodies being retried at once.</summary>
    public const int MaxRetrying = 64;

    /// <summary>The header carrying <c>sha256=HEX</c>, the HMAC-SHA256 of the body, when a key is configured.</summary>
    public const string SignatureHeader = "X-Sidecar-Signature";

    /// <summary>The header naming the body: unique per body, the same across its retries.</summary>
    public const string DeliveryHeader = "X-Sidecar-Delivery";

    /// <summary>The delay before the first retry; each next one waits twice as long.</summary>
    public static readonly TimeSpan DefaultRetryBase = TimeSpan.FromSeconds(1);

    /// <summary>The longest wait between two attempts.</summary>
    public static readonly TimeSpan MaxRetryDelay = TimeSpan.FromSeconds(60);

    /// <summary>The longest <see cref="DisposeAsync"/> waits for deliveries in progress.</summary>
    public static readonly TimeSpan MaxShutdownGrace = TimeSpan.FromSeconds(10);

    /// <summary>Headers the webhook sets itself; a configured header with one of these names is ignored.</summary>
    private static readonly string[] s_reserved =
    [
        "Content-Type", "Content-Length", "Content-Encoding", "Transfer-Encoding", "Host", "Connection", "Expect", "TE",
        SignatureHeader, DeliveryHeader,
    ];

    private readonly ApprovalWebhookConfig _config;
    private readonly ILogger _logger;
    private readonly HttpClient _client;
    private readonly KeyValuePair<string, string>[] _headers;
    private readonly byte[]? _key;
    private readonly SecretMask _secrets = new();
    private readonly string _safeUrl;
    private readonly TimeSpan _retryBase;
    private readonly int _maxAttempts;
    private readonly Channel<Delivery> _queue;
    private readonly SemaphoreSlim _retrySlots = new(MaxRetrying, MaxRetrying);
    private readonly CancellationTokenSource _stop = new();
    private readonly Lock _gate = new();
    private readonly List<Task> _retrying = []; // under _gate
    private readonly Task _loop;

    private long _delivered;
    private long _retries;
    private long _failed;
    private long _dropped;
    private long _abandoned; // part of _failed: cancelled by shutdown
    private int _full; // 1 while enqueueing drops, so the drop is logged once per episode
    private int _disposed;

    /// <summary>Starts the background sender.</summary>
    /// <param name="config">The webhook.</param>
    /// <param name="logger">Where delivery failures and drops are logged.</param>
    /// <param name="handler">
    /// The HTTP handler to send with, owned by the caller; null for the webhook's own (no redirects, no cookies,
    /// pooled connections renewed every few minutes).
    /// </param>
    public ApprovalWebhook(ApprovalWebhookConfig config, ILogger logger, HttpMessageHandler? handler = null)
        : this(config, logger, handler, DefaultRetryBase, MaxAttempts, QueueCapacity)
    {
    }

    /// <summary>For tests: a shorter backoff, fewer attempts, a smaller queue.</summary>
    internal ApprovalWebhook(ApprovalWebhookConfig config, ILogger logger, HttpMessageHandler? handler, TimeSpan retryBase, int maxAttempts, int queueCapacity)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(logger);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(retryBase, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxAttempts, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(queueCapacity, 1);
        if (config.Timeout <= TimeSpan.Zero && config.Timeout != Timeout.InfiniteTimeSpan)
        {
            throw new ArgumentOutOfRangeException(nameof(config), config.Timeout, "the request timeout must be positive");
        }
        _config = config;
        _logger = logger;
        _retryBase = retryBase;
        _maxAttempts = maxAttempts;
        _safeUrl = HttpUpstream.Describe(config.Url);
        _headers = _secrets.PrepareHeaders(config.Headers, config.Url, s_reserved, name => ApprovalWebhookLog.HeaderIgnored(logger, name));
        _key = config.HmacKey is { } key ? Encoding.UTF8.GetBytes(key) : null;
        _queue = Channel.CreateBounded<Delivery>(new BoundedChannelOptions(queueCapacity)
        {
            FullMode = BoundedChannelFullMode.Wait, // with TryWrite: refused, never waited for
            SingleReader = true,
            SingleWriter = false,
        });

        if (handler is null)
        {
            // No redirects (they could carry the headers elsewhere), no cookies; keep-alive connections renewed every
            // few minutes so a webhook behind a DNS name that moves is followed.
            handler = new SocketsHttpHandler
            {
                AllowAutoRedirect = false,
                UseCookies = false,
                PooledConnectionIdleTimeout = TimeSpan.FromSeconds(60),
                PooledConnectionLifetime = TimeSpan.FromMinutes(5),
                ConnectTimeout = config.Timeout,
            };
            _client = new HttpClient(handler, disposeHandler: true) { Timeout = Timeout.InfiniteTimeSpan };
        }
        else
        {
            _client = new HttpClient(handler, disposeHandler: false) { Timeout = Timeout.InfiniteTimeSpan };
        }
        _loop = Task.Run(RunAsync);
    }

    /// <summary>Bodies the webhook accepted (2xx).</summary>
    public long Delivered => Interlocked.Read(ref _delivered);

    /// <summary>Attempts after a body's first, delivered or not.</summary>
    public long Retries => Interlocked.Read(ref _retries);

    /// <summary>Bodies given up: every attempt failed, or shutdown came first.</summary>
    public long Failed => Interlocked.Read(ref _failed);

    /// <summary>Bodies refused by <see cref="Enqueue"/> because the queue was full.</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

    /// <summary>
    /// Queues a body (the JSON of one new pending approval; kept as it is, not copied) for delivery. Never blocks,
    /// never throws.
    /// </summary>
    /// <returns>False if the body was not queued: the queue is full (counted in <see cref="Dropped"/>) or the webhook is disposed.</returns>
    public bool Enqueue(byte[] body)
    {
        if (body is null || Volatile.Read(ref _disposed) != 0)
        {
            return false;
        }
        if (_queue.Writer.TryWrite(new Delivery(body, Guid.NewGuid().ToString("N"))))
        {
            Volatile.Write(ref _full, 0);
            return true;
        }
        if (Volatile.Read(ref _disposed) != 0)
        {
            return false; // completed by DisposeAsync in between
        }
        var dropped = Interlocked.Increment(ref _dropped);
        if (Interlocked.Exchange(ref _full, 1) == 0)
        {
            ApprovalWebhookLog.QueueFull(_logger, _safeUrl, _queue.Reader.Count, dropped);
        }
        return false;
    }

    /// <summary>
    /// Stops accepting bodies, gives the deliveries in progress (queued, in flight, waiting to be retried) a short
    /// grace, then cancels the rest; what was not delivered is counted in <see cref="Failed"/>.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        _queue.Writer.TryComplete();
        var grace = _config.Timeout == Timeout.InfiniteTimeSpan || _config.Timeout > MaxShutdownGrace ? MaxShutdownGrace : _config.Timeout;
        var deadline = TimeProvider.System.GetTimestamp() + (long)(grace.TotalSeconds * TimeProvider.System.TimestampFrequency);
        await WaitAsync(_loop, deadline).ConfigureAwait(false);
        Task[] retrying;
        lock (_gate)
        {
            retrying = [.. _retrying]; // the loop has stopped or will be cancelled: no more are added once it ends
        }
        await WaitAsync(Task.WhenAll(retrying), deadline).ConfigureAwait(false);

        await _stop.CancelAsync().ConfigureAwait(false);
        await _loop.ConfigureAwait(false); // it ends on cancellation and throws nothing else
        lock (_gate)
        {
            retrying = [.. _retrying];
        }
        await Task.WhenAll(retrying).ConfigureAwait(false); // so do they
        while (_queue.Reader.TryRead(out _))
        {
            Abandon();
        }
        if (Interlocked.Read(ref _abandoned) is > 0 and var abandoned)
        {
            ApprovalWebhookLog.Abandoned(_logger, abandoned, _safeUrl);
        }
        _client.Dispose();
        _stop.Dispose();
        _retrySlots.Dispose();
    }

    public override string ToString() => _config.ToString();

    /// <summary>The delay before attempt <paramref name="attempt"/> (2 for the first retry).</summary>
    internal TimeSpan Backoff(int attempt)
    {
        var delay = _retryBase;
        for (var i = 2; i < attempt && delay < MaxRetryDelay; i++)
        {
            delay *= 2;
        }
        return delay < MaxRetryDelay ? delay : MaxRetryDelay;
    }

    private static async Task WaitAsync(Task task, long deadline)
    {
        var left = TimeProvider.System.GetElapsedTime(TimeProvider.System.GetTimestamp(), deadline);
        if (left <= TimeSpan.Zero)
        {
            return;
        }
        try
        {
            await task.WaitAsync(left).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            // Grace is over: the caller cancels what is left.
        }
    }

    /// <summary>Makes each body's first attempt, in order of arrival; hands a failed one to its own retry task.</summary>
    private async Task RunAsync()
    {
        var stop = _stop.Token;
        try
        {
            while (await _queue.Reader.WaitToReadAsync(stop).ConfigureAwait(false))
            {
                while (_queue.Reader.TryRead(out var delivery))
                {
                    await FirstAttemptAsync(delivery, stop).ConfigureAwait(false);
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            // Shutdown: DisposeAsync counts what is left in the queue.
        }
    }

    private async Task FirstAttemptAsync(Delivery delivery, CancellationToken stop)
    {
        string? failure;
        try
        {
            failure = await PostAsync(delivery, stop).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            Abandon();
            throw;
        }
        catch (Exception ex)
        {
            // Not an HTTP failure (PostAsync catches those): a bug or a broken handler. Logged, never swallowed, and
            // the body is retried like any failure; the loop goes on with the next one.
            ApprovalWebhookLog.SendFailed(_logger, ex, _safeUrl);
            failure = ex.GetType().Name;
        }
        if (failure is null)
        {
            Interlocked.Increment(ref _delivered);
            return;
        }
        if (_maxAttempts == 1)
        {
            GiveUp(delivery, failure);
            return;
        }
        ApprovalWebhookLog.AttemptFailed(_logger, delivery.Id, _safeUrl, failure, _maxAttempts - 1, Backoff(2).TotalMilliseconds);
        try
        {
            await _retrySlots.WaitAsync(stop).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            Abandon();
            throw;
        }
        lock (_gate)
        {
            _retrying.RemoveAll(static t => t.IsCompleted);
            _retrying.Add(RetryAsync(delivery, failure, stop));
        }
    }

    /// <summary>Attempts 2 to <see cref="MaxAttempts"/> of one body, with backoff; releases its retry slot at the end.</summary>
    private async Task RetryAsync(Delivery delivery, string failure, CancellationToken stop)
    {
        try
        {
            for (var attempt = 2; attempt <= _maxAttempts; attempt++)
            {
                await Task.Delay(Backoff(attempt), stop).ConfigureAwait(false);
                Interlocked.Increment(ref _retries);
                string? result;
                try
                {
                    result = await PostAsync(delivery, stop).ConfigureAwait(false);
                }
                catch (Exception ex) when (!stop.IsCancellationRequested)
                {
                    ApprovalWebhookLog.SendFailed(_logger, ex, _safeUrl);
                    result = ex.GetType().Name;
                }
                if (result is null)
                {
                    // Logged first: whoever sees the counter move sees the line too.
                    ApprovalWebhookLog.DeliveredAfterRetries(_logger, delivery.Id, _safeUrl, attempt);
                    Interlocked.Increment(ref _delivered);
                    return;
                }
                failure = result;
            }
            GiveUp(delivery, failure);
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            Abandon();
        }
        finally
        {
            _retrySlots.Release();
        }
    }

    private void GiveUp(Delivery delivery, string failure)
    {
        ApprovalWebhookLog.GaveUp(_logger, delivery.Id, _safeUrl, _maxAttempts, failure);
        Interlocked.Increment(ref _failed);
    }

    /// <summary>A body cancelled by shutdown: counted as failed, logged once in <see cref="DisposeAsync"/>.</summary>
    private void Abandon()
    {
        Interlocked.Increment(ref _failed);
        Interlocked.Increment(ref _abandoned);
    }

    /// <summary>One POST. Returns null on a 2xx, else why not (header values and the URL's query masked).</summary>
    private async Task<string?> PostAsync(Delivery delivery, CancellationToken stop)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stop);
        timeout.CancelAfter(_config.Timeout);
        using var request = new HttpRequestMessage(HttpMethod.Post, _config.Url)
        {
            Content = new ByteArrayContent(delivery.Body),
        };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        foreach (var (name, value) in _headers)
        {
            request.Headers.TryAddWithoutValidation(name, value);
        }
        request.Headers.TryAddWithoutValidation(DeliveryHeader, delivery.Id);
        if (_key is not null)
        {
            request.Headers.TryAddWithoutValidation(SignatureHeader, delivery.Signature ??= Sign(_key, delivery.Body));
        }
        try
        {
            // Headers only: the answer's body does not matter, and reading it could outlast the timeout.
            using var response = await _client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token).ConfigureAwait(false);
            if (response.IsSuccessStatusCode)
            {
                return null;
            }
            return string.Create(CultureInfo.InvariantCulture, $"HTTP {(int)response.StatusCode}");
        }
        catch (OperationCanceledException) when (!stop.IsCancellationRequested)
        {
            return $"no answer within {HttpUpstream.FormatTimeout(_config.Timeout)}";
        }
        catch (HttpRequestException ex)
        {
            return _secrets.Redact(HttpUpstream.Reason(ex));
        }
    }

    /// <summary><c>sha256=</c> and the lowercase hex HMAC-SHA256 of <paramref name="body"/>.</summary>
    internal static string Sign(byte[] key, byte[] body)
    {
        Span<byte> mac = stackalloc byte[HMACSHA256.HashSizeInBytes];
        HMACSHA256.HashData(key, body, mac);
        return "sha256=" + Convert.ToHexStringLower(mac);
    }

    /// <summary>One body to deliver: its id (the delivery header) and, once computed, its signature, both kept across retries.</summary>
    private sealed class Delivery(byte[] body, string id)
    {
        public byte[] Body { get; } = body;

        public string Id { get; } = id;

        public string? Signature { get; set; }
    }
}

/// <summary>
/// Log messages of the approval webhook (source-generated: no boxing, no reflection, AOT-safe). Header values, the
/// HMAC key and the bodies are never logged; the URL is logged without its query.
/// </summary>
internal static partial class ApprovalWebhookLog
{
    [LoggerMessage(EventId = 3201, Level = LogLevel.Warning,
        Message = "approval webhook: delivery {Delivery} to {Url} failed ({Reason}); retrying up to {Retries} times, first in {Delay} ms")]
    public static partial void AttemptFailed(ILogger logger, string delivery, string url, string reason, int retries, double delay);

    [LoggerMessage(EventId = 3202, Level = LogLevel.Information,
        Message = "approval webhook: delivery {Delivery} to {Url} succeeded on attempt {Attempt}")]
    public static partial void DeliveredAfterRetries(ILogger logger, string delivery, string url, int attempt);

    [LoggerMessage(EventId = 3203, Level = LogLevel.Error,
        Message = "approval webhook: gave up delivery {Delivery} to {Url} after {Attempts} attempts ({Reason}); the approval stays pending")]
    public static partial void GaveUp(ILogger logger, string delivery, string url, int attempts, string reason);

    [LoggerMessage(EventId = 3204, Level = LogLevel.Warning,
        Message = "approval webhook: the queue for {Url} is full ({Queued} bodies); dropping new ones ({Dropped} dropped since start)")]
    public static partial void QueueFull(ILogger logger, string url, int queued, long dropped);

    [LoggerMessage(EventId = 3205, Level = LogLevel.Warning,
        Message = "approval webhook: shutting down: {Count} deliveries to {Url} abandoned")]
    public static partial void Abandoned(ILogger logger, long count, string url);

    [LoggerMessage(EventId = 3206, Level = LogLevel.Warning,
        Message = "approval webhook: ignoring configured header {Header}: the webhook sets it itself or it is not a request header")]
    public static partial void HeaderIgnored(ILogger logger, string header);

    [LoggerMessage(EventId = 3207, Level = LogLevel.Error, Message = "approval webhook: unexpected error sending to {Url}; retrying")]
    public static partial void SendFailed(ILogger logger, Exception exception, string url);
}
