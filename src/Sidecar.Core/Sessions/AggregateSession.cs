using System.Buffers;
using System.Collections.Concurrent;
using System.Text;
using System.Text.Json;
using Sidecar.Audit;
using Sidecar.Identity;
using Sidecar.JsonRpc;
using Sidecar.Protocol;
using Sidecar.Upstreams;

namespace Sidecar.Sessions;

/// <summary>
/// One agent session over every server of the aggregated endpoint (<c>/mcp</c>, <c>/sse</c>). It holds an ordinary
/// <see cref="McpSession"/> per server (an <see cref="AggregateMember"/>), so each server's policy for the caller's
/// grant decides, audits, rate-limits and holds calls exactly as on <c>/servers/{name}/mcp</c>; this class only
/// names and routes. Tools and prompts are <c>{server}{separator}{name}</c>; resources keep their URIs and go to the
/// server that listed them. The agent's request ids need no mapping (each server has its own upstream session, and
/// the agent's ids are unique in its session); server-to-client requests get ids of the aggregate's own.
/// A server that goes down loses its tools from the list (with <c>notifications/tools/list_changed</c>) and is
/// brought back in the background; when it is back its tools return, with another <c>list_changed</c>.
/// This file is the agent side and the members; <c>AggregateSession.Lists.cs</c> merges lists and the initialize result.
/// </summary>
internal sealed partial class AggregateSession : AgentSession
{
    /// <summary>What <see cref="AgentSession.ServerName"/> is for aggregated sessions: never a valid server name.</summary>
    public const string RouteName = "*";

    private static readonly TimeSpan FirstRetry = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan LastRetry = TimeSpan.FromSeconds(30);

    private readonly SessionEngine _engine;
    private readonly ConcurrentDictionary<string, AggregateMember> _members = new(StringComparer.Ordinal);
    private readonly RpcIdSpace<AggregateMember> _serverRequests = new();
    private readonly ConcurrentDictionary<string, string> _resourceOwners = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, string> _templateOwners = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _lifetime = new();
    private readonly SemaphoreSlim _joining = new(1, 1);
    private byte[]? _initializeParams;
    private string? _protocolVersion;
    private long _counter;

    public AggregateSession(string id, SessionEngine engine, SessionTransport transport, Caller caller)
        : base(id, transport, caller)
    {
        _engine = engine;
        Separator = engine.Current.Config.Aggregate.Separator;
    }

    public override string ServerName => RouteName;

    public override string? ProtocolVersion => Volatile.Read(ref _protocolVersion);

    /// <summary>The separator of the config the session runs under (<c>aggregate.separator</c>).</summary>
    public string Separator { get; private set; }

    public override int Pending
    {
        get
        {
            var pending = 0;
            foreach (var (_, member) in _members)
            {
                pending += member.Inner.Pending;
            }
            return pending;
        }
    }

    public override int HeldCount
    {
        get
        {
            var held = 0;
            foreach (var (_, member) in _members)
            {
                held += member.Inner.HeldCount;
            }
            return held;
        }
    }

    private SessionLog Log => _engine.Log;

    internal override async ValueTask<bool> ProcessAsync(GatewaySnapshot snapshot, Caller caller, ReadOnlySequence<byte> message, JsonRpcScan scan,
        MessageSink sink, CancellationToken cancellationToken)
    {
        Touch();
        switch (scan.Kind)
        {
            case JsonRpcMessageKind.Response or JsonRpcMessageKind.ErrorResponse:
                await AnswerServerRequestAsync(snapshot, caller, message, scan, cancellationToken).ConfigureAwait(false);
                return false;
            case JsonRpcMessageKind.Notification:
                await NotifyAsync(snapshot, caller, message, scan, cancellationToken).ConfigureAwait(false);
                return false;
            case JsonRpcMessageKind.Request:
                return await RequestAsync(snapshot, caller, message, scan, sink, cancellationToken).ConfigureAwait(false);
            default:
                return false;
        }
    }

    private async ValueTask<bool> RequestAsync(GatewaySnapshot snapshot, Caller caller, ReadOnlySequence<byte> message, JsonRpcScan scan,
        MessageSink sink, CancellationToken cancellationToken)
    {
        var rawId = message.Slice(scan.Id.Start, scan.Id.Length).ToArray();
        if (!RpcId.TryCreate(rawId, out _))
        {
            return Answer(sink, JsonRpcResponses.Error(rawId, ErrorCodes.InvalidRequest, SessionMessages.UnsupportedId));
        }
        if (scan.Status == ScanStatus.InvalidParams)
        {
            return Answer(sink, JsonRpcResponses.Error(rawId, ErrorCodes.InvalidParams, SessionMessages.InvalidParams(scan.Error)));
        }
        switch (scan.Method)
        {
            case McpMethod.Initialize:
                if (Volatile.Read(ref _initializeParams) is not null)
                {
                    return Answer(sink, JsonRpcResponses.Error(rawId, ErrorCodes.InvalidRequest, SessionMessages.AlreadyInitialized));
                }
                var initializeParams = scan.Params.IsEmpty ? [] : message.Slice(scan.Params.Start, scan.Params.Length).ToArray();
                return Answer(sink, await InitializeAsync(snapshot, caller, rawId, initializeParams, cancellationToken).ConfigureAwait(false));
            case McpMethod.Ping:
                return Answer(sink, EmptyResult(rawId));
            case McpMethod.ServerDiscover:
                return Answer(sink, JsonRpcResponses.Error(rawId, ErrorCodes.MethodNotFound, SessionMessages.DiscoverInSession));
        }
        if (Volatile.Read(ref _initializeParams) is null)
        {
            return Answer(sink, JsonRpcResponses.Error(rawId, ErrorCodes.InvalidRequest, SessionMessages.AggregateNotInitialized));
        }
        switch (scan.Method)
        {
            case McpMethod.ToolsList or McpMethod.PromptsList or McpMethod.ResourcesList or McpMethod.ResourcesTemplatesList:
                return Answer(sink, await ListAsync(snapshot, caller, ListKind.Of(scan.Method), message, scan, rawId, cancellationToken).ConfigureAwait(false));
            case McpMethod.ToolsCall or McpMethod.PromptsGet:
                return await ByNameAsync(snapshot, caller, message, scan, rawId, sink, cancellationToken).ConfigureAwait(false);
            case McpMethod.ResourcesRead or McpMethod.ResourcesSubscribe or McpMethod.ResourcesUnsubscribe:
                return await ByUriAsync(snapshot, caller, message, scan, rawId, sink, cancellationToken).ConfigureAwait(false);
            case McpMethod.CompletionComplete:
                return await CompleteAsync(snapshot, caller, message, scan, rawId, sink, cancellationToken).ConfigureAwait(false);
            case McpMethod.LoggingSetLevel:
                await ForEachUpAsync(snapshot, caller, "logging/setLevel", message, scan, cancellationToken).ConfigureAwait(false);
                return Answer(sink, EmptyResult(rawId));
            default:
                var method = Encoding.UTF8.GetString(message.Slice(scan.MethodName.Start, scan.MethodName.Length).ToArray());
                return Answer(sink, JsonRpcResponses.Error(rawId, ErrorCodes.MethodNotFound, SessionMessages.AggregateMethodNotFound(method)));
        }
    }

    private static bool Answer(MessageSink sink, byte[] response)
    {
        sink.TryWrite(response, true);
        return true;
    }

    private static byte[] EmptyResult(ReadOnlySpan<byte> rawId)
    {
        var result = new byte[rawId.Length + 36];
        var length = 0;
        Append("{\"jsonrpc\":\"2.0\",\"id\":"u8);
        Append(rawId);
        Append(",\"result\":{}}"u8);
        return result.AsSpan(0, length).ToArray();

        void Append(ReadOnlySpan<byte> bytes)
        {
            bytes.CopyTo(result.AsSpan(length));
            length += bytes.Length;
        }
    }

    // ---- Routing by name: tools/call, prompts/get ---------------------------------------------------------------

    /// <summary>
    /// A <c>tools/call</c> or <c>prompts/get</c>: the server is the prefix of the (unescaped) name, and the request goes
    /// to that server's session with the bare name, where its policy for <paramref name="caller"/> decides.
    /// </summary>
    private async ValueTask<bool> ByNameAsync(GatewaySnapshot snapshot, Caller caller, ReadOnlySequence<byte> message, JsonRpcScan scan, byte[] rawId,
        MessageSink sink, CancellationToken cancellationToken)
    {
        var name = NameOf(message, scan);
        if (name is null || FindByPrefix(name) is not { } member)
        {
            Log.UnknownPrefix(Id, name ?? "", Separator);
            return Answer(sink, JsonRpcResponses.Error(rawId, ErrorCodes.InvalidParams,
                SessionMessages.AggregateUnknownName(scan.Method == McpMethod.ToolsCall ? "tool" : "prompt", name, Separator)));
        }
        var rewritten = Replace(message, scan.Name, JsonString(name.AsSpan(member.Prefix.Length)));
        if (Rescan(rewritten, snapshot, out var inner) is { } error)
        {
            return Answer(sink, JsonRpcResponses.Error(rawId, ErrorCodes.InvalidParams, error));
        }
        return await member.Inner.ProcessAsync(snapshot, caller, new ReadOnlySequence<byte>(rewritten), inner, member.RelayTo(sink), cancellationToken)
            .ConfigureAwait(false);
    }

    /// <summary>The member whose <c>{server}{separator}</c> begins <paramref name="name"/> (the longest, were names to nest), with a tool name after it.</summary>
    private AggregateMember? FindByPrefix(string name)
    {
        AggregateMember? found = null;
        foreach (var (_, member) in _members)
        {
            if (name.Length > member.Prefix.Length && name.StartsWith(member.Prefix, StringComparison.Ordinal)
                && (found is null || member.Prefix.Length > found.Prefix.Length))
            {
                found = member;
            }
        }
        return found;
    }

    private static string? NameOf(ReadOnlySequence<byte> message, in JsonRpcScan scan)
    {
        if (scan.Name.IsEmpty)
        {
            return null;
        }
        var buffer = new char[scan.Name.Length];
        return JsonRpcScanner.TryCopyName(message, scan, buffer, out var written) ? new string(buffer, 0, written) : null;
    }

    // ---- Routing by URI: resources/read, subscribe, unsubscribe ---------------------------------------------------

    private async ValueTask<bool> ByUriAsync(GatewaySnapshot snapshot, Caller caller, ReadOnlySequence<byte> message, JsonRpcScan scan, byte[] rawId,
        MessageSink sink, CancellationToken cancellationToken)
    {
        var uri = StringOf(message.Slice(scan.Uri.Start, scan.Uri.Length));
        if (uri is null || OwnerOf(uri) is not { } member)
        {
            return Answer(sink, JsonRpcResponses.Error(rawId, ErrorCodes.ResourceNotFound, SessionMessages.AggregateUnknownResource(uri)));
        }
        return await member.Inner.ProcessAsync(snapshot, caller, message, scan, member.RelayTo(sink), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// The server that listed <paramref name="uri"/>; else the one whose listed template's fixed beginning matches
    /// the most of it; else the only server that is up. Null when none can be told.
    /// </summary>
    private AggregateMember? OwnerOf(string uri)
    {
        if (_resourceOwners.TryGetValue(uri, out var owner) && _members.TryGetValue(owner, out var listed))
        {
            return listed;
        }
        string? best = null;
        var bestLength = 0;
        foreach (var (prefix, server) in _templateOwners)
        {
            if (prefix.Length > bestLength && uri.StartsWith(prefix, StringComparison.Ordinal))
            {
                best = server;
                bestLength = prefix.Length;
            }
        }
        if (best is not null && _members.TryGetValue(best, out var templated))
        {
            return templated;
        }
        AggregateMember? only = null;
        foreach (var (_, member) in _members)
        {
            if (member.IsUp)
            {
                if (only is not null)
                {
                    return null;
                }
                only = member;
            }
        }
        return only;
    }

    // ---- completion/complete: by the prompt's prefix or the resource's owner -------------------------------------

    private async ValueTask<bool> CompleteAsync(GatewaySnapshot snapshot, Caller caller, ReadOnlySequence<byte> message, JsonRpcScan scan, byte[] rawId,
        MessageSink sink, CancellationToken cancellationToken)
    {
        var (type, value, range) = CompletionRef(message, scan);
        AggregateMember? member = null;
        var rewritten = message;
        if (type == "ref/prompt" && value is not null && FindByPrefix(value) is { } byName)
        {
            member = byName;
            rewritten = new ReadOnlySequence<byte>(Replace(message, range, JsonString(value.AsSpan(byName.Prefix.Length))));
        }
        else if (type == "ref/resource" && value is not null)
        {
            member = OwnerOf(value);
        }
        if (member is null)
        {
            return Answer(sink, JsonRpcResponses.Error(rawId, ErrorCodes.InvalidParams, SessionMessages.AggregateUnknownName("prompt or resource", value, Separator)));
        }
        if (Rescan(rewritten.ToArray(), snapshot, out var inner) is { } error)
        {
            return Answer(sink, JsonRpcResponses.Error(rawId, ErrorCodes.InvalidParams, error));
        }
        return await member.Inner.ProcessAsync(snapshot, caller, rewritten, inner, member.RelayTo(sink), cancellationToken).ConfigureAwait(false);
    }

    /// <summary><c>params.ref</c>: its type, its <c>name</c> (prompt) or <c>uri</c> (resource), and that value's token range.</summary>
    private static (string? Type, string? Value, TokenRange Range) CompletionRef(ReadOnlySequence<byte> message, in JsonRpcScan scan)
    {
        if (scan.Params.IsEmpty)
        {
            return default;
        }
        var bytes = message.Slice(scan.Params.Start, scan.Params.Length).ToArray();
        var reader = new Utf8JsonReader(bytes);
        string? type = null, value = null;
        var range = default(TokenRange);
        if (!SeekMember(ref reader, "ref"u8) || reader.TokenType != JsonTokenType.StartObject)
        {
            return default;
        }
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            var key = reader.GetString();
            reader.Read();
            if (reader.TokenType == JsonTokenType.String && key is "type")
            {
                type = reader.GetString();
            }
            else if (reader.TokenType == JsonTokenType.String && key is "name" or "uri")
            {
                value = reader.GetString();
                range = new TokenRange(scan.Params.Start + (int)reader.TokenStartIndex, (int)(reader.BytesConsumed - reader.TokenStartIndex));
            }
            else
            {
                reader.Skip();
            }
        }
        return (type, value, range);
    }

    // ---- Notifications and answers from the agent -----------------------------------------------------------------

    private async ValueTask NotifyAsync(GatewaySnapshot snapshot, Caller caller, ReadOnlySequence<byte> message, JsonRpcScan scan, CancellationToken cancellationToken)
    {
        switch (scan.Method)
        {
            case McpMethod.NotificationsInitialized:
                return; // each server got its own as soon as it was initialized
            case McpMethod.NotificationsProgress:
                // Progress of the agent's work on a server's request: to that server, with the server's own token.
                var bytes = message.IsSingleSegment ? message.First : message.ToArray();
                if (_serverRequests.TryRouteProgress(bytes.Span, scan, out var route, out var progress) && route.Lane is { } owner
                    && Rescan(progress, snapshot, out var progressScan) is null)
                {
                    await owner.Inner.ProcessAsync(snapshot, caller, new ReadOnlySequence<byte>(progress), progressScan, owner.RelayTo(null), cancellationToken)
                        .ConfigureAwait(false);
                }
                return;
            case McpMethod.NotificationsCancelled:
                if (CancelledRequest(message, scan) is { } key)
                {
                    foreach (var (_, member) in _members)
                    {
                        if (member.Inner.IsPending(key))
                        {
                            await member.Inner.ProcessAsync(snapshot, caller, message, scan, member.RelayTo(null), cancellationToken).ConfigureAwait(false);
                            return;
                        }
                    }
                }
                return;
            default:
                foreach (var (_, member) in _members)
                {
                    if (member.Inner.IsInitialized)
                    {
                        await member.Inner.ProcessAsync(snapshot, caller, message, scan, member.RelayTo(null), cancellationToken).ConfigureAwait(false);
                    }
                }
                return;
        }
    }

    private static RpcId? CancelledRequest(ReadOnlySequence<byte> message, in JsonRpcScan scan)
    {
        if (scan.Params.IsEmpty)
        {
            return null;
        }
        var parameters = message.Slice(scan.Params.Start, scan.Params.Length);
        var reader = new Utf8JsonReader(parameters);
        if (!SeekMember(ref reader, "requestId"u8))
        {
            return null;
        }
        var start = (int)reader.TokenStartIndex;
        var token = parameters.Slice(start, (int)reader.BytesConsumed - start).ToArray();
        return RpcId.TryCreate(token, out var key) ? key : null;
    }

    /// <summary>The agent answers a server-to-client request: its id goes back to the server's own, and the answer to that server.</summary>
    private async ValueTask AnswerServerRequestAsync(GatewaySnapshot snapshot, Caller caller, ReadOnlySequence<byte> message, JsonRpcScan scan,
        CancellationToken cancellationToken)
    {
        var contiguous = message.IsSingleSegment ? message.First : message.ToArray();
        if (!_serverRequests.TryRouteResponse(contiguous.Span, scan, out var route, out var rewritten)
            || route.Lane is not { } member || !_members.TryGetValue(member.Name, out var current) || !ReferenceEquals(current, member))
        {
            Log.UnknownServerRequest(Id, Encoding.UTF8.GetString(contiguous.Span.Slice(scan.Id.Start, scan.Id.Length)));
            return;
        }
        if (Rescan(rewritten, snapshot, out var inner) is null)
        {
            await member.Inner.ProcessAsync(snapshot, caller, new ReadOnlySequence<byte>(rewritten), inner, member.RelayTo(null), cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// What a member sends the agent on its own (not an answer). A server-to-client request gets an id of the
    /// aggregate's own, from one counter for all members (<see cref="RpcIdMapper{TLane}"/>, as a shared stdio process
    /// maps its sessions' ids), kept until the agent answers; the server's cancellation of such a request names that
    /// id too (and is dropped when the request is no longer in flight). Everything else goes as it is. Empty: drop it.
    /// </summary>
    internal ReadOnlyMemory<byte> ToAgent(AggregateMember member, ReadOnlyMemory<byte> payload)
    {
        if (JsonRpcScanner.Scan(payload.Span, out var scan, _engine.Current.Options.Scanner) != ScanStatus.Ok)
        {
            return payload;
        }
        if (scan.Kind == JsonRpcMessageKind.Request)
        {
            // The mapped copy lives in a pooled buffer; the sink keeps the message until the agent reads it.
            using var mapped = member.Requests.MapRequest(payload.Span, scan, correlation: 0);
            return mapped.Span.ToArray();
        }
        if (scan.Kind == JsonRpcMessageKind.Notification && scan.Method == McpMethod.NotificationsCancelled)
        {
            if (!member.Requests.TryMapCancellation(payload.Span, scan, out var cancelled))
            {
                return default;
            }
            using (cancelled)
            {
                return cancelled.Span.ToArray();
            }
        }
        return payload;
    }

    /// <summary>The agent's ids of the members' server-to-client requests (see <see cref="ToAgent"/>).</summary>
    internal RpcIdSpace<AggregateMember> ServerRequests => _serverRequests;

    internal void SendToStream(ReadOnlyMemory<byte> payload) => ToStream(payload);

    // ---- Members: joining, going down, coming back ---------------------------------------------------------------

    /// <summary>
    /// Makes every server of <paramref name="snapshot"/>'s aggregated endpoint a member (one that cannot join, its
    /// <c>limits.maxSessionsPerServer</c> being full, is logged and left out) and brings the new ones up.
    /// </summary>
    private async Task JoinAsync(GatewaySnapshot snapshot, Caller caller, CancellationToken cancellationToken)
    {
        var joining = new List<Task>();
        await _joining.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            foreach (var config in snapshot.Config.Servers)
            {
                if (!snapshot.Config.Aggregate.Includes(config.Name) || _members.ContainsKey(config.Name) || snapshot.Find(config.Name) is not { } server
                    || IsDisposed || !_engine.TryReserveServer(server))
                {
                    continue;
                }
                var inner = new McpSession($"{Id}/{server.Name}", _engine, server, Transport, Caller);
                var member = new AggregateMember(this, inner);
                inner.UpstreamStateChanged = (_, up) => OnUpstreamState(member, up);
                inner.AttachStream(member.RelayTo(null));
                _members[server.Name] = member;
                joining.Add(BringUpAsync(member, snapshot, caller, cancellationToken));
            }
        }
        finally
        {
            _joining.Release();
        }
        await Task.WhenAll(joining).ConfigureAwait(false);
    }

    /// <summary>Brings <paramref name="member"/> up (<see cref="TryBringUpAsync"/>); when that fails it is down and revived in the background.</summary>
    private async Task BringUpAsync(AggregateMember member, GatewaySnapshot snapshot, Caller caller, CancellationToken cancellationToken)
    {
        var failure = await TryBringUpAsync(member, snapshot, caller, cancellationToken).ConfigureAwait(false);
        SetUp(member, failure is null, failure);
    }

    /// <summary>
    /// Initializes <paramref name="member"/> (with the agent's own <c>initialize</c>, then <c>notifications/initialized</c>)
    /// or, once initialized, reconnects it. Returns why it failed, or null. Never throws.
    /// </summary>
    private async Task<string?> TryBringUpAsync(AggregateMember member, GatewaySnapshot snapshot, Caller caller, CancellationToken cancellationToken)
    {
        try
        {
            if (member.Inner.IsInitialized)
            {
                await member.Inner.ReconnectAsync(snapshot.Options, cancellationToken).ConfigureAwait(false);
                return null;
            }
            var answer = await AskAsync(member, snapshot, caller, "initialize", Volatile.Read(ref _initializeParams), cancellationToken).ConfigureAwait(false);
            if ((answer is { } payload ? FailureOf(payload.Span) : "no answer") is { } failure)
            {
                return failure;
            }
            member.Instructions = InstructionsOf(answer!.Value.Span);
            var initialized = JsonRpcResponses.InitializedNotification;
            JsonRpcScanner.Scan(initialized, out var scan);
            await member.Inner.ProcessAsync(snapshot, caller, new ReadOnlySequence<byte>(initialized), scan, member.RelayTo(null), cancellationToken)
                .ConfigureAwait(false);
            return null;
        }
        catch (UpstreamException ex)
        {
            return ex.Message;
        }
        catch (OperationCanceledException)
        {
            return "timed out";
        }
        catch (ObjectDisposedException)
        {
            return "the session closed";
        }
    }

    /// <summary>The upstream of a member was lost (false) or came back initialized (true).</summary>
    private void OnUpstreamState(AggregateMember member, bool up) => SetUp(member, up, up ? null : "its upstream connection ended");

    private void SetUp(AggregateMember member, bool up, string? reason)
    {
        if (IsDisposed || !_members.TryGetValue(member.Name, out var current) || !ReferenceEquals(current, member))
        {
            return;
        }
        if (member.SetUp(up))
        {
            if (up)
            {
                Log.MemberUp(Id, member.Name);
            }
            else
            {
                Log.MemberDown(Id, member.Name, reason ?? "unknown");
            }
            if (Volatile.Read(ref _protocolVersion) is not null)
            {
                ListsChanged();
            }
        }
        if (!up)
        {
            _ = ReviveAsync(member);
        }
    }

    /// <summary>Tries to bring a down member back, 1 s after it went down, then doubling up to 30 s, until it is up or the session closes.</summary>
    private async Task ReviveAsync(AggregateMember member)
    {
        if (!member.TryStartReviving())
        {
            return;
        }
        try
        {
            var wait = FirstRetry;
            while (!IsDisposed && !member.IsUp)
            {
                await Task.Delay(wait, _lifetime.Token).ConfigureAwait(false);
                if (!_members.TryGetValue(member.Name, out var current) || !ReferenceEquals(current, member))
                {
                    return;
                }
                using var attempt = CancellationTokenSource.CreateLinkedTokenSource(_lifetime.Token);
                var snapshot = _engine.Current;
                attempt.CancelAfter(snapshot.Options.Limits.ConnectTimeout + snapshot.Options.Limits.UpstreamTimeout);
                if (await TryBringUpAsync(member, snapshot, Caller, attempt.Token).ConfigureAwait(false) is null && member.SetUp(true))
                {
                    Log.MemberUp(Id, member.Name);
                    ListsChanged();
                }
                wait = wait * 2 > LastRetry ? LastRetry : wait * 2;
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
        {
            // The session closed.
        }
        finally
        {
            member.StopReviving();
        }
    }

    /// <summary>
    /// Sends a request of the aggregate's own to one member (through its session, so a <c>tools/list</c> is filtered
    /// by that server's policy for the caller) and waits for the answer, which the member's session always gives:
    /// the upstream's, or an error when it is unreachable or too slow (<c>limits.upstreamTimeout</c>).
    /// </summary>
    private async Task<ReadOnlyMemory<byte>?> AskAsync(AggregateMember member, GatewaySnapshot snapshot, Caller caller, string method, byte[]? parameters,
        CancellationToken cancellationToken)
    {
        var request = JsonRpcResponses.Request($"sidecar-aggregate-{Interlocked.Increment(ref _counter)}", method, parameters ?? []);
        if (JsonRpcScanner.Scan(request, out var scan, snapshot.Options.Scanner) != ScanStatus.Ok)
        {
            return null;
        }
        var sink = new MessageSink(acceptsRelatedMessages: false);
        if (!await member.Inner.ProcessAsync(snapshot, caller, new ReadOnlySequence<byte>(request), scan, sink, cancellationToken).ConfigureAwait(false))
        {
            return null;
        }
        while (await sink.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
        {
            if (sink.TryRead(out var answer) && answer.IsResponse)
            {
                return answer.Payload;
            }
        }
        return null;
    }

    /// <summary>Sends <paramref name="method"/> with the agent's params to every member that is up, and waits for them all.</summary>
    private async Task ForEachUpAsync(GatewaySnapshot snapshot, Caller caller, string method, ReadOnlySequence<byte> message, JsonRpcScan scan,
        CancellationToken cancellationToken)
    {
        var parameters = scan.Params.IsEmpty ? null : message.Slice(scan.Params.Start, scan.Params.Length).ToArray();
        var asking = new List<Task<ReadOnlyMemory<byte>?>>();
        foreach (var (_, member) in _members)
        {
            if (member.IsUp)
            {
                asking.Add(AskAsync(member, snapshot, caller, method, parameters, cancellationToken));
            }
        }
        await Task.WhenAll(asking).ConfigureAwait(false);
    }

    /// <summary>Tells the agent that the merged lists changed (a server went down or came back, or the config was reloaded).</summary>
    private void ListsChanged()
    {
        ToStream(ToolsListChanged);
        ToStream(PromptsListChanged);
        ToStream(ResourcesListChanged);
    }

    private static readonly byte[] ToolsListChanged = """{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"""u8.ToArray();
    private static readonly byte[] PromptsListChanged = """{"jsonrpc":"2.0","method":"notifications/prompts/list_changed"}"""u8.ToArray();
    private static readonly byte[] ResourcesListChanged = """{"jsonrpc":"2.0","method":"notifications/resources/list_changed"}"""u8.ToArray();

    /// <summary>A reload removed <paramref name="server"/>: its member is closed and its tools leave the list. Returns 1 if it was a member.</summary>
    internal int ServerRemoved(string server)
    {
        if (!_members.TryRemove(server, out var member))
        {
            return 0;
        }
        _ = CloseMemberAsync(member, AuditOutcome.Unavailable, SessionMessages.ServerRemoved(server));
        ListsChanged();
        return 1;
    }

    /// <summary>A reload was applied: servers new to the aggregated endpoint join, and the agent is told to list again (policies may have changed).</summary>
    internal void SnapshotApplied(GatewaySnapshot previous, GatewaySnapshot next)
    {
        if (IsDisposed || Volatile.Read(ref _protocolVersion) is null)
        {
            return;
        }
        foreach (var (name, member) in _members)
        {
            if (!next.Config.Aggregate.Includes(name))
            {
                ServerRemoved(name);
            }
        }
        Separator = next.Config.Aggregate.Separator;
        foreach (var (_, member) in _members)
        {
            member.Prefix = member.Name + Separator;
        }
        _ = JoinQuietlyAsync(next);
        ListsChanged();
    }

    private async Task JoinQuietlyAsync(GatewaySnapshot snapshot)
    {
        try
        {
            await JoinAsync(snapshot, Caller, _lifetime.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
        {
            // The session closed meanwhile.
        }
    }

    // ---- Lifecycle ------------------------------------------------------------------------------------------------

    public override void Abandon(MessageSink sink)
    {
        foreach (var (_, member) in _members)
        {
            member.Inner.Abandon(sink);
        }
    }

    public override void ExpireOverdue(long now)
    {
        foreach (var (_, member) in _members)
        {
            member.Inner.ExpireOverdue(now);
        }
    }

    internal override void AbortHeldForShutdown()
    {
        foreach (var (_, member) in _members)
        {
            member.Inner.AbortHeldForShutdown();
        }
    }

    public override async ValueTask CloseAsync(AuditOutcome outcome, string message)
    {
        if (!BeginClose())
        {
            return;
        }
        _engine.Forget(this);
        await _lifetime.CancelAsync().ConfigureAwait(false);
        var closing = new List<Task>();
        foreach (var (name, member) in _members)
        {
            if (_members.TryRemove(name, out _))
            {
                closing.Add(CloseMemberAsync(member, outcome, message));
            }
        }
        await Task.WhenAll(closing).ConfigureAwait(false);
        StreamSink?.Complete();
        _lifetime.Dispose();
    }

    private async Task CloseMemberAsync(AggregateMember member, AuditOutcome outcome, string message)
    {
        member.Requests.Clear(); // answers of the agent to its requests have nowhere to go now
        try
        {
            await member.Inner.CloseAsync(outcome, message).ConfigureAwait(false);
        }
        finally
        {
            _engine.ReleaseServer(member.Name);
        }
    }

    // ---- Bytes ----------------------------------------------------------------------------------------------------

    /// <summary><paramref name="message"/> with the token at <paramref name="range"/> replaced by <paramref name="token"/>.</summary>
    private static byte[] Replace(ReadOnlySequence<byte> message, TokenRange range, ReadOnlySpan<byte> token)
    {
        var length = (int)message.Length;
        var result = new byte[length - range.Length + token.Length];
        message.Slice(0, range.Start).CopyTo(result);
        token.CopyTo(result.AsSpan(range.Start));
        message.Slice(range.End).CopyTo(result.AsSpan(range.Start + token.Length));
        return result;
    }

    /// <summary><paramref name="text"/> as a JSON string token, quotes included.</summary>
    private static byte[] JsonString(ReadOnlySpan<char> text)
    {
        var buffer = new ArrayBufferWriter<byte>(text.Length + 8);
        using (var writer = new Utf8JsonWriter(buffer, JsonRpcResponses.s_writerOptions))
        {
            writer.WriteStringValue(text);
        }
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>Scans a message the aggregate rewrote; the error when it no longer passes (never expected: only a name or id changed).</summary>
    private static string? Rescan(byte[] rewritten, GatewaySnapshot snapshot, out JsonRpcScan scan)
        => JsonRpcScanner.Scan(rewritten, out scan, snapshot.Options.Scanner) == ScanStatus.Ok ? null : "the rewritten request does not scan: " + scan.Error;

    /// <summary>A JSON string token's value; null when it is not one.</summary>
    private static string? StringOf(ReadOnlySequence<byte> token)
    {
        if (token.IsEmpty)
        {
            return null;
        }
        var reader = new Utf8JsonReader(token);
        return reader.Read() && reader.TokenType == JsonTokenType.String ? reader.GetString() : null;
    }
}
