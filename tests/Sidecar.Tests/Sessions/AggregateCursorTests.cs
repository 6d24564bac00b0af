using Sidecar.Sessions;

namespace Sidecar.Tests.Sessions;

/// <summary>The aggregated endpoint's list cursors: every paginated server's own cursor, in one opaque string.</summary>
public sealed class AggregateCursorTests
{
    [Fact]
    public void A_cursor_carries_each_servers_cursor_back_unchanged()
    {
        var cursor = AggregateSession.EncodeCursor([("a", "page:2"), ("b", "\"odd\" cursor ✓ \u0001")]);
        Assert.StartsWith("sidecar-aggregate.", cursor, StringComparison.Ordinal);
        Assert.DoesNotContain("page:2", cursor, StringComparison.Ordinal);
        var targets = new List<(string, string?)>();
        Assert.True(AggregateSession.TryDecodeCursor(cursor, targets));
        Assert.Equal([("a", "page:2"), ("b", "\"odd\" cursor ✓ \u0001")], targets);
    }

    [Theory]
    [InlineData("page:2")]
    [InlineData("sidecar-aggregate.")]
    [InlineData("sidecar-aggregate.!!!")]
    [InlineData("sidecar-aggregate.W10")]          // []
    [InlineData("sidecar-aggregate.eyJhIjoxfQ")]   // {"a":1}
    [InlineData("sidecar-aggregate.W1siYSJdXQ")]   // [["a"]]
    [InlineData("sidecar-aggregate.W1siYSIsMV1d")] // [["a",1]]
    public void Anything_else_is_not_a_cursor(string cursor)
    {
        Assert.False(AggregateSession.TryDecodeCursor(cursor, []));
    }
}
