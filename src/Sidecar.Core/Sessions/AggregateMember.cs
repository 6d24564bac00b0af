using Sidecar.Upstreams;

namespace Sidecar.Sessions;

/// <summary>
/// One server inside an <see cref="AggregateSession"/>: the ordinary <see cref="McpSession"/> the aggregate holds on
/// it (which decides, audits, holds for approval and forwards exactly as <c>/servers/{name}/mcp</c> does), whether
/// its tools are listed now (<see cref="IsUp"/>), and the relay that carries its traffic to the agent, where
/// server-to-client requests get ids of the aggregate's own (<see cref="Requests"/>) so the agent's answer finds its server again.
/// </summary>
internal sealed class AggregateMember : MessageSink.IMessageRelay
{
    private readonly AggregateSession _owner;
    private int _up;
    private int _reviving;

    public AggregateMember(AggregateSession owner, McpSession inner)
    {
        _owner = owner;
        Inner = inner;
        Prefix = inner.ServerName + owner.Separator;
        Requests = new RpcIdMapper<AggregateMember>(owner.ServerRequests, this);
    }

    /// <summary>The agent-facing ids of this server's server-to-client requests, in the session's one id space.</summary>
    public RpcIdMapper<AggregateMember> Requests { get; }

    public string Name => Inner.ServerName;

    /// <summary>The aggregate's session on this server.</summary>
    public McpSession Inner { get; }

    /// <summary><c>{server}{separator}</c>, as the separator was when the member joined.</summary>
    public string Prefix { get; set; }

    /// <summary>The <c>instructions</c> of the server's <c>initialize</c> result, if any.</summary>
    public string? Instructions { get; set; }

    /// <summary>Initialized and connected: its tools are in the merged list.</summary>
    public bool IsUp => Volatile.Read(ref _up) != 0;

    /// <summary>Sets <see cref="IsUp"/>; true when that changed it.</summary>
    public bool SetUp(bool up) => Interlocked.Exchange(ref _up, up ? 1 : 0) != (up ? 1 : 0);

    /// <summary>Only one revival loop per member at a time.</summary>
    public bool TryStartReviving() => Interlocked.CompareExchange(ref _reviving, 1, 0) == 0;

    public void StopReviving() => Volatile.Write(ref _reviving, 0);

    /// <summary>A relay sink for one POST of the agent (<paramref name="target"/>); null target: the agent's stream.</summary>
    public MessageSink RelayTo(MessageSink? target) => new(this, target, target?.AcceptsRelatedMessages ?? true);

    bool MessageSink.IMessageRelay.Relay(MessageSink? target, ReadOnlyMemory<byte> payload, bool isResponse, long auditTicket)
    {
        if (!isResponse)
        {
            payload = _owner.ToAgent(this, payload);
            if (payload.IsEmpty)
            {
                return true;
            }
        }
        if (target is null)
        {
            _owner.SendToStream(payload);
            return true;
        }
        return target.TryWrite(payload, isResponse, auditTicket);
    }

    public override string ToString() => Name;
}
