using Microsoft.AspNetCore.Http;
using Sidecar.Gateway;
using Sidecar.Sessions;

namespace Sidecar.Tests.Gateway;

public class HttpGuardsTests
{
    /// <summary>The host and origin checks of a gateway listening on loopback with <paramref name="allowedHosts"/>.</summary>
    private sealed class Guard(OriginGuard origins)
    {
        public string? CheckHostAndOrigin(HttpRequest request) => HttpGuards.CheckHostAndOrigin(request, origins, listeningOnLoopback: true);
    }

    private static Guard Guards(params string[] allowedHosts) => new(new OriginGuard(allowedHosts, []));

    private static HttpRequest Request(string? host = null, string? accept = null, string? contentType = null)
    {
        var context = new DefaultHttpContext();
        if (host is not null)
        {
            context.Request.Headers.Host = host;
        }
        if (accept is not null)
        {
            context.Request.Headers.Accept = accept;
        }
        context.Request.ContentType = contentType;
        return context.Request;
    }

    [Theory]
    [InlineData("application/json, text/event-stream", "application/json", true)]
    [InlineData("application/json, text/event-stream", "text/event-stream", true)]
    [InlineData("text/event-stream;q=0.9 ,application/json ; charset=utf-8", "application/json", true)]
    [InlineData("APPLICATION/JSON", "application/json", true)]
    [InlineData("*/*", "text/event-stream", true)]
    [InlineData("application/json", "text/event-stream", false)]
    [InlineData("application/jsonx, text/plain", "application/json", false)]
    [InlineData("", "application/json", false)]
    public void Accept_lists_are_read_item_by_item(string accept, string mediaType, bool expected)
        => Assert.Equal(expected, HttpGuards.Accepts(Request(accept: accept), mediaType));

    [Fact]
    public void Several_accept_headers_count()
    {
        var context = new DefaultHttpContext();
        context.Request.Headers.Accept = new Microsoft.Extensions.Primitives.StringValues(["text/plain", "text/event-stream"]);
        Assert.True(HttpGuards.Accepts(context.Request, "text/event-stream"));
        Assert.False(HttpGuards.Accepts(context.Request, "application/json"));
    }

    [Theory]
    [InlineData("application/json", true)]
    [InlineData("Application/JSON", true)]
    [InlineData("application/json; charset=utf-8", true)]
    [InlineData("application/json-patch+json", false)]
    [InlineData("text/plain", false)]
    [InlineData("application/json, text/plain", false)]
    [InlineData(null, false)]
    public void Json_content_types(string? contentType, bool expected)
        => Assert.Equal(expected, HttpGuards.IsJsonContent(Request(contentType: contentType)));

    [Theory]
    [InlineData("localhost", true)]
    [InlineData("localhost:8787", true)]
    [InlineData("LOCALHOST:8787", true)]
    [InlineData("127.0.0.1:41234", true)]
    [InlineData("[::1]:8787", true)]
    [InlineData("[::1]", true)]
    [InlineData("::1", true)]
    [InlineData("gateway.internal:8787", true)]
    [InlineData("evil.example:8787", false)]
    [InlineData("localhost.evil.example", false)]
    [InlineData("127.0.0.1.nip.io:80", false)]
    [InlineData(":8787", false)]
    public void Hosts_are_matched_with_or_without_their_port(string host, bool allowed)
        => Assert.Equal(allowed, Guards("gateway.internal").CheckHostAndOrigin(Request(host: host)) is null);

    [Fact]
    public void A_missing_host_is_refused() => Assert.NotNull(Guards().CheckHostAndOrigin(Request()));

    [Fact]
    public void The_common_checks_allocate_nothing()
    {
        var guards = Guards();
        var request = Request(host: "127.0.0.1:41234", accept: "application/json, text/event-stream", contentType: "application/json");
        var ok = Check(guards, request, 100);

        var before = GC.GetAllocatedBytesForCurrentThread();
        ok += Check(guards, request, 1000);
        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.Equal(0, allocated);
        Assert.Equal(1100, ok);
    }

    private static int Check(Guard guards, HttpRequest request, int count)
    {
        var ok = 0;
        for (var i = 0; i < count; i++)
        {
            if (guards.CheckHostAndOrigin(request) is null && HttpGuards.Accepts(request, "application/json")
                && HttpGuards.Accepts(request, "text/event-stream") && HttpGuards.IsJsonContent(request))
            {
                ok++;
            }
        }
        return ok;
    }
}
