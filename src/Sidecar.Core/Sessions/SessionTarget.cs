namespace Sidecar.Sessions;

/// <summary>What an agent's URL reaches: one server (<c>/servers/{name}/…</c>) or, with no server, the aggregated endpoint (<c>/mcp</c>, <c>/sse</c>).</summary>
internal readonly record struct SessionTarget(ServerState? Server)
{
    public static SessionTarget Aggregate => default;

    public bool IsAggregate => Server is null;

    /// <summary>The server's name, or <see cref="AggregateSession.RouteName"/>: what <see cref="SessionEngine.Find"/> matches sessions on.</summary>
    public string Name => Server?.Name ?? AggregateSession.RouteName;
}
