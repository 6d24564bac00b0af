using System.Collections.Concurrent;
using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Sidecar.Approvals;
using Sidecar.Configuration;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Approvals;

/// <summary>The approval webhook against a real HTTP receiver (Kestrel on loopback).</summary>
public sealed class ApprovalWebhookTests
{
    private const string Key = "webhook-hmac-key-0123456789";
    private static readonly TimeSpan s_wait = TimeSpan.FromSeconds(20);
    private static readonly TimeSpan s_fastRetry = TimeSpan.FromMilliseconds(50);

    private readonly TestLoggerFactory _loggers = new();

    private ILogger Logger => _loggers.CreateLogger("Sidecar.Approvals");

    [Fact]
    public async Task The_body_arrives_intact_as_json_with_the_configured_headers_and_a_signature_that_verifies()
    {
        await using var receiver = await Receiver.StartAsync();
        var headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase)
        {
            ["Authorization"] = "Bearer secret-token-42",
            ["X-Tenant"] = "acme",
            ["Content-Type"] = "text/plain", // the webhook sets it itself: ignored, with a warning naming the header
            [ApprovalWebhook.SignatureHeader] = "sha256=forged",
        };
        await using var webhook = new ApprovalWebhook(Config(receiver.Url, headers, Key), Logger);

        var body = Encoding.UTF8.GetBytes("""{"id":"apr_1","tool":"write_file","arguments":{"path":"/tmp/résumé 😀"},"note":"secret-note"}""");
        Assert.True(webhook.Enqueue(body));
        await Until(() => webhook.Delivered == 1, "delivered");

        var request = Assert.Single(receiver.Requests);
        Assert.Equal("POST", request.Method);
        Assert.Equal("/hook", request.Path);
        Assert.Equal(body, request.Body);
        Assert.Equal("application/json", request.Headers["Content-Type"]);
        Assert.Equal("Bearer secret-token-42", request.Headers["Authorization"]);
        Assert.Equal("acme", request.Headers["X-Tenant"]);

        // The receiver's check: HMAC-SHA256 of the raw body with the shared key, compared in constant time.
        var signature = request.Headers[ApprovalWebhook.SignatureHeader];
        Assert.StartsWith("sha256=", signature, StringComparison.Ordinal);
        var expected = HMACSHA256.HashData(Encoding.UTF8.GetBytes(Key), request.Body);
        Assert.True(CryptographicOperations.FixedTimeEquals(expected, Convert.FromHexString(signature["sha256=".Length..])));
        Assert.Equal("sha256=" + Convert.ToHexStringLower(expected), signature);

        Assert.Matches("^[0-9a-f]{32}$", request.Headers[ApprovalWebhook.DeliveryHeader]);
        Assert.Equal(0, webhook.Retries);
        Assert.Equal(0, webhook.Failed);
        Assert.Equal(0, webhook.Dropped);
        Assert.Contains(_loggers.Entries, e => e.EventId.Id == 3206 && e.Message.Contains("Content-Type", StringComparison.Ordinal));
        Assert.Contains(_loggers.Entries, e => e.EventId.Id == 3206 && e.Message.Contains(ApprovalWebhook.SignatureHeader, StringComparison.Ordinal));
        AssertNothingSecretLogged();
    }

    [Fact]
    public async Task Without_a_key_there_is_no_signature_and_each_body_has_its_own_delivery_id_in_order()
    {
        await using var receiver = await Receiver.StartAsync();
        await using var webhook = new ApprovalWebhook(Config(receiver.Url), Logger);

        for (var i = 0; i < 5; i++)
        {
            Assert.True(webhook.Enqueue(Encoding.UTF8.GetBytes($$"""{"n":{{i}}}""")));
        }
        await Until(() => webhook.Delivered == 5, "5 delivered");

        var requests = receiver.Requests;
        Assert.Equal(["""{"n":0}""", """{"n":1}""", """{"n":2}""", """{"n":3}""", """{"n":4}"""], requests.Select(r => Encoding.UTF8.GetString(r.Body)));
        Assert.All(requests, r => Assert.False(r.Headers.ContainsKey(ApprovalWebhook.SignatureHeader)));
        Assert.Equal(5, requests.Select(r => r.Headers[ApprovalWebhook.DeliveryHeader]).Distinct().Count());
    }

    [Fact]
    public async Task Two_500s_then_a_200_is_delivered_after_two_retries_with_the_same_delivery_id_and_signature()
    {
        await using var receiver = await Receiver.StartAsync((_, index) => Task.FromResult(index < 2 ? 500 : 200));
        await using var webhook = Create(Config(receiver.Url, hmacKey: Key));

        Assert.True(webhook.Enqueue("""{"id":"apr_2"}"""u8.ToArray()));
        await Until(() => webhook.Delivered == 1, "delivered after retries");

        Assert.Equal(2, webhook.Retries);
        Assert.Equal(0, webhook.Failed);
        var requests = receiver.Requests;
        Assert.Equal(3, requests.Count);
        Assert.Single(requests.Select(r => r.Headers[ApprovalWebhook.DeliveryHeader]).Distinct());
        Assert.Single(requests.Select(r => r.Headers[ApprovalWebhook.SignatureHeader]).Distinct());
        Assert.All(requests, r => Assert.Equal("""{"id":"apr_2"}""", Encoding.UTF8.GetString(r.Body)));
        Assert.Single(_loggers.Entries, e => e.EventId.Id == 3201 && e.Message.Contains("HTTP 500", StringComparison.Ordinal));
        Assert.Single(_loggers.Entries, e => e.EventId.Id == 3202);
    }

    [Fact]
    public async Task A_webhook_that_is_down_fails_after_every_attempt_while_enqueue_returns_at_once()
    {
        var url = new Uri($"http://127.0.0.1:{EverythingServer.FreeLoopbackPort()}/hook?token=query-secret-7");
        // A long first backoff: the counters show Enqueue came back before any retry was made.
        await using var webhook = Create(Config(url), retryBase: TimeSpan.FromMilliseconds(500), maxAttempts: 3);

        Assert.True(webhook.Enqueue("""{"id":"apr_3"}"""u8.ToArray()));
        Assert.True(webhook.Enqueue("""{"id":"apr_4"}"""u8.ToArray()));
        Assert.Equal(0, webhook.Retries);
        Assert.Equal(0, webhook.Failed);

        // The counter moves just before the log line is written: wait for both.
        await Until(() => webhook.Failed == 2 && _loggers.Entries.Count(e => e.EventId.Id == 3203) == 2, "both given up");
        Assert.Equal(4, webhook.Retries); // 2 bodies × (3 attempts − the first)
        Assert.Equal(0, webhook.Delivered);
        Assert.Equal(0, webhook.Dropped);
        var gaveUp = _loggers.Entries.Where(e => e.EventId.Id == 3203).ToList();
        Assert.Equal(2, gaveUp.Count);
        Assert.All(gaveUp, e => Assert.Equal(LogLevel.Error, e.Level));
        Assert.All(gaveUp, e => Assert.Contains("after 3 attempts", e.Message, StringComparison.Ordinal));
        // The URL is logged without its query, which may hold a credential.
        Assert.Contains($"http://127.0.0.1:{url.Port}/hook", gaveUp[0].Message, StringComparison.Ordinal);
        Assert.DoesNotContain("query-secret-7", _loggers.Dump(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_failing_body_does_not_hold_back_the_next_one()
    {
        // The first body is refused until the second has arrived: had the second waited behind the first's retries,
        // the first would have been given up.
        Receiver? self = null;
        await using var receiver = await Receiver.StartAsync((request, _) =>
        {
            var first = Encoding.UTF8.GetString(request.Body).Contains("first", StringComparison.Ordinal);
            var secondArrived = self!.Requests.Any(r => Encoding.UTF8.GetString(r.Body).Contains("second", StringComparison.Ordinal));
            return Task.FromResult(first && !secondArrived ? 503 : 200);
        });
        self = receiver;
        await using var webhook = Create(Config(receiver.Url));

        Assert.True(webhook.Enqueue("""{"id":"first"}"""u8.ToArray()));
        Assert.True(webhook.Enqueue("""{"id":"second"}"""u8.ToArray()));
        await Until(() => webhook.Delivered == 2, "both delivered");

        Assert.Equal(0, webhook.Failed);
        Assert.True(webhook.Retries >= 1);
        var bodies = receiver.Requests.Select(r => Encoding.UTF8.GetString(r.Body)).ToList();
        Assert.Equal("""{"id":"first"}""", bodies[0]);
        Assert.Equal("""{"id":"second"}""", bodies[1]);
    }

    [Fact]
    public async Task An_answer_slower_than_the_timeout_is_a_failed_attempt_and_retried()
    {
        await using var receiver = await Receiver.StartAsync(async (request, index) =>
        {
            if (index == 0)
            {
                await Task.Delay(TimeSpan.FromSeconds(10), request.Aborted).ContinueWith(_ => { }, TaskScheduler.Default);
            }
            return 200;
        });
        await using var webhook = Create(Config(receiver.Url, timeout: TimeSpan.FromMilliseconds(300)));

        Assert.True(webhook.Enqueue("""{"id":"apr_5"}"""u8.ToArray()));
        await Until(() => webhook.Delivered == 1, "delivered on the retry");

        Assert.Equal(1, webhook.Retries);
        Assert.Equal(0, webhook.Failed);
        Assert.Equal(2, receiver.Arrived);
        Assert.Contains(_loggers.Entries, e => e.EventId.Id == 3201 && e.Message.Contains("no answer within 300 ms", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_redirect_is_not_followed_and_counts_as_a_failure()
    {
        await using var receiver = await Receiver.StartAsync((request, _) =>
        {
            request.Context.Response.Headers.Location = "/elsewhere";
            return Task.FromResult(307);
        });
        await using var webhook = Create(Config(receiver.Url), maxAttempts: 1);

        Assert.True(webhook.Enqueue("""{"id":"apr_6"}"""u8.ToArray()));
        await Until(() => webhook.Failed == 1, "given up");

        var request = Assert.Single(receiver.Requests);
        Assert.Equal("/hook", request.Path);
        Assert.Equal(0, webhook.Retries);
        Assert.Contains(_loggers.Entries, e => e.EventId.Id == 3203 && e.Message.Contains("HTTP 307", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_full_queue_drops_new_bodies_counts_them_and_logs_once()
    {
        var hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var receiver = await Receiver.StartAsync(async (request, index) =>
        {
            if (index == 0)
            {
                await hold.Task.WaitAsync(request.Aborted);
            }
            return 200;
        });
        await using var webhook = Create(Config(receiver.Url, timeout: TimeSpan.FromSeconds(30)), queueCapacity: 4);

        // The first body is in flight (the receiver holds it): the queue behind it takes 4 more, then drops.
        Assert.True(webhook.Enqueue(Body(0)));
        await Until(() => receiver.Arrived == 1, "the first body in flight");
        for (var i = 1; i <= 4; i++)
        {
            Assert.True(webhook.Enqueue(Body(i)));
        }
        Assert.False(webhook.Enqueue(Body(5)));
        Assert.False(webhook.Enqueue(Body(6)));
        Assert.Equal(2, webhook.Dropped);
        Assert.Single(_loggers.Entries, e => e.EventId.Id == 3204);

        hold.SetResult();
        await Until(() => webhook.Delivered == 5, "the queued bodies delivered");
        Assert.Equal([0, 1, 2, 3, 4], receiver.Requests.Select(r => (int)(r.Body[5] - '0')));
        Assert.Equal(2, webhook.Dropped);
        Assert.Equal(0, webhook.Failed);

        static byte[] Body(int i) => Encoding.UTF8.GetBytes($$"""{"n":{{i}}}""");
    }

    [Fact]
    public async Task Dispose_gives_a_short_grace_then_abandons_pending_retries_and_refuses_new_bodies()
    {
        var url = new Uri($"http://127.0.0.1:{EverythingServer.FreeLoopbackPort()}/hook");
        var webhook = Create(Config(url, timeout: TimeSpan.FromMilliseconds(500)), retryBase: TimeSpan.FromSeconds(30));

        Assert.True(webhook.Enqueue("""{"id":"apr_7"}"""u8.ToArray()));
        await Until(() => _loggers.Entries.Any(e => e.EventId.Id == 3201), "the first attempt failed");

        var clock = Stopwatch.StartNew();
        await webhook.DisposeAsync();
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"dispose took {clock.Elapsed}"); // not the 30 s backoff

        Assert.Equal(1, webhook.Failed);
        Assert.Equal(0, webhook.Retries);
        Assert.Contains(_loggers.Entries, e => e.EventId.Id == 3205 && e.Message.Contains("1 deliveries", StringComparison.Ordinal));
        Assert.False(webhook.Enqueue("""{"id":"late"}"""u8.ToArray()));
        Assert.Equal(0, webhook.Dropped);
        await webhook.DisposeAsync(); // twice is harmless
    }

    [Fact]
    public async Task Dispose_lets_queued_bodies_go_out_within_the_grace()
    {
        await using var receiver = await Receiver.StartAsync();
        var webhook = Create(Config(receiver.Url, timeout: TimeSpan.FromSeconds(5)));
        for (var i = 0; i < 20; i++)
        {
            Assert.True(webhook.Enqueue(Encoding.UTF8.GetBytes($$"""{"n":{{i}}}""")));
        }
        await webhook.DisposeAsync();

        Assert.Equal(20, webhook.Delivered);
        Assert.Equal(0, webhook.Failed);
        Assert.Equal(20, receiver.Arrived);
    }

    private ApprovalWebhook Create(ApprovalWebhookConfig config, TimeSpan? retryBase = null, int maxAttempts = ApprovalWebhook.MaxAttempts, int queueCapacity = ApprovalWebhook.QueueCapacity) =>
        new(config, Logger, handler: null, retryBase ?? s_fastRetry, maxAttempts, queueCapacity);

    private static ApprovalWebhookConfig Config(Uri url, IReadOnlyDictionary<string, string>? headers = null, string? hmacKey = null, TimeSpan? timeout = null) =>
        new(url, headers ?? new Dictionary<string, string>(), hmacKey, timeout ?? TimeSpan.FromSeconds(5));

    private void AssertNothingSecretLogged()
    {
        var log = _loggers.Dump();
        Assert.DoesNotContain("secret-token-42", log, StringComparison.Ordinal);
        Assert.DoesNotContain(Key, log, StringComparison.Ordinal);
        Assert.DoesNotContain("secret-note", log, StringComparison.Ordinal);
        Assert.DoesNotContain("acme", log, StringComparison.Ordinal);
    }

    private async Task Until(Func<bool> condition, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > s_wait)
            {
                Assert.Fail($"timed out waiting for: {what}\n{_loggers.Dump()}");
            }
            await Task.Delay(10);
        }
    }

    /// <summary>
    /// A webhook receiver on loopback (Kestrel): records each request as it arrives, then answers with the status
    /// <c>respond</c> gives for it and its arrival index (200 by default).
    /// </summary>
    private sealed class Receiver : IAsyncDisposable
    {
        private readonly WebApplication _app;
        private readonly Func<Received, int, Task<int>> _respond;
        private readonly ConcurrentQueue<Received> _received = new();
        private int _arrived;

        private Receiver(WebApplication app, Func<Received, int, Task<int>> respond)
        {
            _app = app;
            _respond = respond;
        }

        public sealed record Received(string Method, string Path, byte[] Body, IReadOnlyDictionary<string, string> Headers, HttpContext Context)
        {
            public CancellationToken Aborted => Context.RequestAborted;
        }

        public Uri Url { get; private set; } = null!;

        /// <summary>Requests that arrived, answered or not, in arrival order.</summary>
        public IReadOnlyList<Received> Requests => [.. _received];

        public int Arrived => Volatile.Read(ref _arrived);

        public static async Task<Receiver> StartAsync(Func<Received, int, Task<int>>? respond = null)
        {
            var builder = WebApplication.CreateSlimBuilder();
            builder.Logging.ClearProviders();
            builder.WebHost.UseUrls("http://127.0.0.1:0");
            builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(2));
            var app = builder.Build();
            var receiver = new Receiver(app, respond ?? ((_, _) => Task.FromResult(200)));
            app.Run(receiver.HandleAsync);
            await app.StartAsync();
            receiver.Url = new Uri($"http://127.0.0.1:{new Uri(app.Urls.Single()).Port}/hook");
            return receiver;
        }

        private async Task HandleAsync(HttpContext context)
        {
            using var body = new MemoryStream();
            await context.Request.Body.CopyToAsync(body, context.RequestAborted);
            var headers = context.Request.Headers.ToDictionary(h => h.Key, h => h.Value.ToString(), StringComparer.OrdinalIgnoreCase);
            var request = new Received(context.Request.Method, context.Request.Path.Value ?? "", body.ToArray(), headers, context);
            int index;
            lock (_received)
            {
                index = _arrived;
                _received.Enqueue(request);
                Volatile.Write(ref _arrived, index + 1);
            }
            context.Response.StatusCode = await _respond(request, index);
        }

        public async ValueTask DisposeAsync()
        {
            await _app.StopAsync();
            await _app.DisposeAsync();
        }
    }
}
