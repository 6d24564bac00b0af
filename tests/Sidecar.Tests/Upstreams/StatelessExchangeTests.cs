using System.Net;
using System.Net.Http.Headers;
using System.Text;
using Sidecar.Upstreams;

namespace Sidecar.Tests.Upstreams;

public class StatelessExchangeTests
{
    private static HttpResponseMessage Json(string body)
    {
        var content = new ByteArrayContent(Encoding.UTF8.GetBytes(body));
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        return new HttpResponseMessage(HttpStatusCode.OK) { Content = content };
    }

    [Fact]
    public async Task A_json_answer_is_one_message_then_the_end()
    {
        await using var exchange = await StatelessExchange.ReadAsync(Json("""{"jsonrpc":"2.0","id":1,"result":{}}"""), 1024, CancellationToken.None);
        Assert.False(exchange.IsEventStream);
        var first = await exchange.ReadAsync(CancellationToken.None);
        Assert.NotNull(first);
        Assert.Equal("""{"jsonrpc":"2.0","id":1,"result":{}}""", Encoding.UTF8.GetString(first.Value.Span));
        // Regression: the end was an empty message instead of null, so the gateway's read loop never ended.
        Assert.Null(await exchange.ReadAsync(CancellationToken.None));
        Assert.Null(await exchange.ReadAsync(CancellationToken.None));
    }

    [Fact]
    public async Task An_empty_json_answer_has_no_message()
    {
        await using var exchange = await StatelessExchange.ReadAsync(Json(""), 1024, CancellationToken.None);
        Assert.Null(await exchange.ReadAsync(CancellationToken.None));
    }
}
