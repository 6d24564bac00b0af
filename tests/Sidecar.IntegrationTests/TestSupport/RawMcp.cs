using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;

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

    /// <summary>A <c>tools/call</c> body; <paramref name="rawId"/> is the id's JSON (<c>7</c>, <c>"a-7"</c>).</summary>
    public static string CallBody(string rawId, string tool, string arguments = "{}")
        => "{\"jsonrpc\":\"2.0\",\"id\":" + rawId + ",\"method\":\"tools/call\",\"params\":{\"name\":\"" + tool + "\",\"arguments\":" + arguments + "}}";

    /// <summary>
    /// The answer in a response: its JSON body, or the first message with an id among the data of its SSE events
    /// (progress and other notifications on the stream are skipped).
    /// </summary>
    public static async Task<JsonElement> AnswerAsync(HttpResponseMessage response)
    {
        var text = await response.Content.ReadAsStringAsync();
        foreach (var line in text.Split('\n'))
        {
            var json = line.StartsWith("data: ", StringComparison.Ordinal) ? line[6..] : line;
            if (json.StartsWith('{') && JsonDocument.Parse(json).RootElement is { } message && message.TryGetProperty("id", out _))
            {
                return message.Clone();
            }
        }
        throw new InvalidOperationException($"no answer in the response (HTTP {(int)response.StatusCode}): {text}");
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
