using System.Collections.Concurrent;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Sidecar.IntegrationTests.TestSupport;

/// <summary>
/// A real HTTP audit collector on loopback (Kestrel): records every POST it gets and answers with
/// <see cref="Status"/>; while <see cref="Hold"/> is set, requests wait (a collector that accepts but never answers).
/// </summary>
public sealed class AuditCollector : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly ConcurrentQueue<Request> _requests = new();
    private volatile int _status = 200;
    private volatile TaskCompletionSource? _hold;
    private int _arrived;

    private AuditCollector(WebApplication app, int port)
    {
        _app = app;
        Port = port;
    }

    /// <summary>One POST as received, with the status it was answered with.</summary>
    public sealed record Request(int Status, string Body, string? ContentType, string? Sequence, IReadOnlyDictionary<string, string> Headers);

    public int Port { get; }

    public Uri Url => new($"http://127.0.0.1:{Port}/audit");

    /// <summary>The status code to answer with (200 by default).</summary>
    public int Status
    {
        get => _status;
        set => _status = value;
    }

    /// <summary>A reason phrase to answer with, if any.</summary>
    public string? ReasonPhrase { get; set; }

    /// <summary>While set, requests wait for it (or for the client to give up) before being answered.</summary>
    public TaskCompletionSource? Hold
    {
        get => _hold;
        set => _hold = value;
    }

    /// <summary>Answers the held requests and stops holding.</summary>
    public void Release()
    {
        var hold = _hold;
        _hold = null;
        hold?.TrySetResult();
    }

    /// <summary>Requests that arrived, including held ones not answered yet.</summary>
    public int Arrived => Volatile.Read(ref _arrived);

    /// <summary>Every answered request so far, in arrival order.</summary>
    public IReadOnlyList<Request> Requests => [.. _requests];

    /// <summary>The requests answered with a 2xx, in arrival order.</summary>
    public IReadOnlyList<Request> Accepted => [.. _requests.Where(r => r.Status is >= 200 and < 300)];

    /// <summary>Starts a collector on <c>127.0.0.1:<paramref name="port"/></c> (0: any free port).</summary>
    public static async Task<AuditCollector> StartAsync(int port = 0)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls($"http://127.0.0.1:{port}");
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(2));
        var app = builder.Build();
        AuditCollector? collector = null;
        app.Run(context => collector!.HandleAsync(context));
        await app.StartAsync();
        var bound = new Uri(app.Urls.Single()).Port;
        collector = new AuditCollector(app, bound);
        return collector;
    }

    private async Task HandleAsync(HttpContext context)
    {
        using var reader = new StreamReader(context.Request.Body);
        var body = await reader.ReadToEndAsync(context.RequestAborted);
        var headers = context.Request.Headers.ToDictionary(h => h.Key, h => h.Value.ToString(), StringComparer.OrdinalIgnoreCase);
        Interlocked.Increment(ref _arrived);
        if (_hold is { } hold)
        {
            // A request the client gives up on is not recorded: it was never answered.
            await hold.Task.WaitAsync(context.RequestAborted);
        }
        var status = _status;
        _requests.Enqueue(new Request(status, body, context.Request.ContentType, headers.GetValueOrDefault("X-Sidecar-Audit-Sequence"), headers));
        context.Response.StatusCode = status;
        if (ReasonPhrase is { } reason)
        {
            context.Features.GetRequiredFeature<IHttpResponseFeature>().ReasonPhrase = reason;
        }
    }

    public async ValueTask DisposeAsync()
    {
        _hold?.TrySetResult();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
