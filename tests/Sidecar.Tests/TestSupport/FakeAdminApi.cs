using System.Collections.Concurrent;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;

namespace Sidecar.Tests.TestSupport;

/// <summary>
/// A stand-in for the gateway's admin API on 127.0.0.1 (any free port): answers what a test scripts for
/// <c>METHOD /path?query</c> (as sent, not decoded), 401 to a request without <c>Authorization: Bearer <see cref="Token"/></c>, and
/// records every request.
/// </summary>
public sealed class FakeAdminApi : IAsyncDisposable
{
    /// <summary>The variable holding <see cref="Token"/>: named for this test run, set once, never changed.</summary>
    public static readonly string TokenVariable = "SIDECAR_TEST_ADMIN_TOKEN_" + Guid.NewGuid().ToString("N");

    /// <summary>A variable holding a token the fake refuses.</summary>
    public static readonly string WrongTokenVariable = "SIDECAR_TEST_WRONG_TOKEN_" + Guid.NewGuid().ToString("N");

    public static readonly string Token = "admin-" + Guid.NewGuid().ToString("N");

    public static readonly string WrongToken = "wrong-" + Guid.NewGuid().ToString("N");

    static FakeAdminApi()
    {
        Environment.SetEnvironmentVariable(TokenVariable, Token);
        Environment.SetEnvironmentVariable(WrongTokenVariable, WrongToken);
    }

    public sealed record Request(string Method, string Target, string? Authorization, string? ContentType, string Body);

    private readonly WebApplication _app;
    private readonly ConcurrentQueue<Request> _requests = new();
    private readonly ConcurrentDictionary<string, (int Status, string Body)> _answers = new(StringComparer.Ordinal);

    private FakeAdminApi(WebApplication app) => _app = app;

    /// <summary><c>http://127.0.0.1:PORT</c>.</summary>
    public string Url { get; private set; } = "";

    public int Port { get; private set; }

    public IReadOnlyList<Request> Requests => [.. _requests];

    /// <summary>The arguments that point the CLI at this fake with the right token.</summary>
    public string[] Args => ["--admin", Url, "--token-env", TokenVariable];

    public static async Task<FakeAdminApi> StartAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        var app = builder.Build();
        var api = new FakeAdminApi(app);
        app.Run(api.HandleAsync);
        await app.StartAsync();
        var url = new Uri(app.Urls.Single());
        api.Port = url.Port;
        api.Url = $"http://127.0.0.1:{url.Port}";
        return api;
    }

    /// <summary>What to answer to <paramref name="method"/> <paramref name="target"/> (path and query).</summary>
    public void Answer(string method, string target, int status, string body) => _answers[$"{method} {target}"] = (status, body);

    private async Task HandleAsync(HttpContext context)
    {
        using var reader = new StreamReader(context.Request.Body, Encoding.UTF8);
        var body = await reader.ReadToEndAsync(context.RequestAborted);
        // As sent: Request.Path is decoded, and an id's escaping is what a test checks.
        var target = context.Features.GetRequiredFeature<IHttpRequestFeature>().RawTarget;
        var authorization = context.Request.Headers.Authorization.Count > 0 ? context.Request.Headers.Authorization.ToString() : null;
        _requests.Enqueue(new Request(context.Request.Method, target, authorization, context.Request.ContentType, body));
        var (status, answer) = authorization != "Bearer " + Token
            ? (401, """{ "error": "unauthorized" }""")
            : _answers.TryGetValue($"{context.Request.Method} {target}", out var scripted) ? scripted : (500, """{ "error": "not scripted" }""");
        context.Response.StatusCode = status;
        context.Response.ContentType = "application/json";
        await context.Response.WriteAsync(answer, context.RequestAborted);
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
