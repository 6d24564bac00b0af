using System.Net;
using System.Net.Http.Headers;
using System.Text;

namespace Sidecar.IntegrationTests.TestSupport;

/// <summary>Streamable HTTP by hand: the bodies and headers an agent sends, without an SDK in between.</summary>
public static class RawMcp
{
    public const string InitializeBody =
        """{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}""";

    /// <summary>The <c>initialize</c> request of a client asking for <paramref name="version"/>.</summary>
    public static string Initialize(string version) => InitializeBody.Replace("2025-06-18", version, StringComparison.Ordinal);

    /// <summary>POSTs <paramref name="body"/> as an agent would (accepting JSON and SSE), with the session header when given.</summary>
    public static async Task<HttpResponseMessage> PostAsync(HttpClient http, Uri url, string body, string? session,
        string contentType = "application/json", string accept = "application/json, text/event-stream", Action<HttpRequestMessage>? configure = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, url) { Content = new ByteArrayContent(Encoding.UTF8.GetBytes(body)) };
        request.Content.Headers.ContentType = MediaTypeHeaderValue.Parse(contentType);
        request.Headers.TryAddWithoutValidation("Accept", accept);
        if (session is not null)
        {
            request.Headers.Add("Mcp-Session-Id", session);
        }
        configure?.Invoke(request);
        return await http.SendAsync(request);
    }

    /// <summary>initialize, then notifications/initialized: an open session, whose id is returned.</summary>
    public static async Task<string> OpenSessionAsync(HttpClient http, Uri url, string version = "2025-06-18")
    {
        using var response = await PostAsync(http, url, Initialize(version), null);
        var body = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.OK, body);
        var session = response.Headers.GetValues("Mcp-Session-Id").Single();
        using var initialized = await PostAsync(http, url, """{"jsonrpc":"2.0","method":"notifications/initialized"}""", session);
        Assert.Equal(HttpStatusCode.Accepted, initialized.StatusCode);
        return session;
    }
}
