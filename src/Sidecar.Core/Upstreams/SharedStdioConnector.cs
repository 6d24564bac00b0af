using System.Buffers;
using System.Collections.Concurrent;
using System.Text;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Sidecar.Configuration;
using Sidecar.JsonRpc;
using Sidecar.Protocol;
using Sidecar.Sessions;

namespace Sidecar.Upstreams;

/// <summary>
/// A stdio server with <c>"share": true</c>: one server process (spawned by a <see cref="StdioUpstreamConnector"/>)
/// for every session of the server, instead of one per session. Each <see cref="ConnectAsync"/> opens a lane on that
/// process: an <see cref="IUpstreamConnection"/> that looks to its session exactly like a process of its own.
/// </summary>
/// <remarks>
/// <para>
/// <b>The process</b> is spawned by the first <see cref="ConnectAsync"/>, and again by the first one after it ended
/// (spawns are serialized: concurrent connects start one process). When it ends (a crash, or it stopped answering
/// <c>initialize</c>), every lane's <see cref="IUpstreamConnection.Completion"/> faults with an
/// <see cref="UpstreamException"/>: only the calls in flight fail, and each session reconnects on its next message,
/// replaying its <c>initialize</c>. Disposing a lane never stops the process; disposing the connector does.
/// </para>
/// <para>
/// <b>Ids</b>: every request a lane sends gets a fresh upstream id (<see cref="RpcIdMapper{TLane}"/>), and so does its
/// <c>params._meta.progressToken</c>; the answer, and each <c>notifications/progress</c>, goes to the lane that sent
/// the request with the lane's own id and token put back byte for byte. A lane's <c>notifications/cancelled</c> names
/// the upstream id instead of its own (and is not sent when that request is not in flight). Answers for a lane that
/// has gone away are dropped.
/// </para>
/// <para>
/// <b>Initialize</b>: the first lane's <c>initialize</c> goes to the process, and its result is kept for the process's
/// life; later lanes' <c>initialize</c> (and those that arrive while the first is in flight) are answered from it with
/// their own id, and never reach the process. <c>notifications/initialized</c> is sent to the process once. So the
/// process sees the first session's capabilities and client info, and every session gets the same result.
/// </para>
/// <para>
/// <b>From the server</b>: notifications that belong to no request (list changes, log messages, resource updates)
/// go to every lane. A server-to-client request (sampling, elicitation, roots) goes to the lane that has requests in
/// flight when exactly one has, and that lane's answer goes back with the server's id; otherwise the server gets a
/// JSON-RPC error (-32603) saying the request cannot be routed in a shared process. <c>ping</c> is answered here.
/// </para>
/// <para>
/// Sending takes no lock: a request is scanned, copied once with its new id into a pooled buffer, registered in a
/// <see cref="ConcurrentDictionary{TKey, TValue}"/> and queued on the process's stdin. One loop reads the process's
/// stdout and hands each message to its lane's bounded event channel, waiting while that channel is full (a
/// session reads its events promptly, independently of its agent).
/// </para>
/// </remarks>
public sealed class SharedStdioConnector : IUpstreamConnector, IDisposable
{
    private static readonly TimeSpan s_disposeBound = TimeSpan.FromSeconds(10);

    private readonly StdioUpstreamConnector _spawner;
    private readonly GatewayLimits _limits;
    private readonly ILogger _logger;
    private readonly JsonRpcScannerOptions _scanner;
    private readonly SemaphoreSlim _spawnGate = new(1, 1);
    private SharedProcess? _process;
    private int _spawned;
    private int _disposed;

    public SharedStdioConnector(ServerConfig server, GatewayLimits limits, ILoggerFactory? loggers)
    {
        ArgumentNullException.ThrowIfNull(server);
        ArgumentNullException.ThrowIfNull(limits);
        _spawner = new StdioUpstreamConnector(server, limits, loggers);
        _limits = limits;
        _logger = loggers?.CreateLogger(UpstreamLog.Category) ?? NullLogger.Instance;
        _scanner = new JsonRpcScannerOptions { MaxMessageBytes = limits.MaxMessageBytes };
    }

    public string Name => _spawner.Name;

    public string Transport => "stdio";

    /// <summary>Processes started so far.</summary>
    public int Spawned => Volatile.Read(ref _spawned);

    /// <summary>The live process's id; 0 when there is none.</summary>
    public int ProcessId => Volatile.Read(ref _process) is { IsEnded: false } process ? process.ProcessId : 0;

    /// <summary>Opens a lane on the shared process, starting the process first when there is none (or it ended).</summary>
    public async ValueTask<IUpstreamConnection> ConnectAsync(CancellationToken cancellationToken)
    {
        for (var attempt = 0; ; attempt++)
        {
            var process = Volatile.Read(ref _process);
            if (process is null || process.IsEnded)
            {
                process = await SpawnAsync(cancellationToken).ConfigureAwait(false);
            }
            if (process.TryOpenLane() is { } lane)
            {
                return lane;
            }
            if (attempt > 0)
            {
                throw new UpstreamException($"the shared upstream process of '{Name}' ended as soon as it started");
            }
        }
    }

    private async Task<SharedProcess> SpawnAsync(CancellationToken cancellationToken)
    {
        await _spawnGate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ThrowIfDisposed();
            if (Volatile.Read(ref _process) is { IsEnded: false } current)
            {
                return current; // another connect started it while this one waited
            }
            var connection = (StdioUpstreamConnection)await _spawner.ConnectAsync(cancellationToken).ConfigureAwait(false);
            var process = new SharedProcess(this, connection);
            Interlocked.Increment(ref _spawned);
            Volatile.Write(ref _process, process);
            process.Start();
            UpstreamLog.SharedProcessStarted(_logger, Name, connection.ProcessId);
            if (Volatile.Read(ref _disposed) != 0)
            {
                // Disposed while spawning: Dispose may have looked before this process was published.
                await process.StopAsync().ConfigureAwait(false);
                ThrowIfDisposed();
            }
            return process;
        }
        finally
        {
            _spawnGate.Release();
        }
    }

    private void ThrowIfDisposed()
    {
        if (Volatile.Read(ref _disposed) != 0)
        {
            throw new UpstreamException($"upstream '{Name}' is stopping");
        }
    }

    /// <summary>
    /// Stops the shared process (stdin closed, then its process tree killed if it lingers) and ends every lane.
    /// Waits for that, at most <see cref="s_disposeBound"/>: a process must not outlive the server's removal.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        if (Interlocked.Exchange(ref _process, null) is { } process)
        {
            try
            {
                process.StopAsync().Wait(s_disposeBound);
            }
            catch (AggregateException ex)
            {
                UpstreamLog.ConnectionFailed(_logger, Name, ex.GetBaseException().Message);
            }
        }
    }

    public override string ToString() => $"{_spawner} (shared)";

    private sealed record InitializeRequest(Lane Lane, byte[] Message, byte[] RawId, long Correlation);

    private sealed record ServerRequest(Lane Lane, byte[] RawId);

    /// <summary>The one process and the lanes on it.</summary>
    private sealed class SharedProcess
    {
        private static ReadOnlySpan<byte> ResultPrefix => "{\"jsonrpc\":\"2.0\",\"id\":"u8;

        private readonly SharedStdioConnector _owner;
        private readonly StdioUpstreamConnection _connection;
        private readonly RpcIdSpace<Lane> _ids = new();
        private readonly RpcIdMapper<Lane> _own; // the process's own requests: the first initialize
        private readonly ConcurrentDictionary<Lane, byte> _lanes = new();
        private readonly ConcurrentDictionary<RpcId, ServerRequest> _serverRequests = new();
        private readonly CancellationTokenSource _lifetime = new();
        private readonly Lock _initializeGate = new();
        private readonly List<InitializeRequest> _initializeWaiting = [];
        private byte[]? _initializeResult;
        private InitializeRequest? _initializing;
        private int _initializedSent;
        private int _lanesOpened;
        private int _ended;
        private Task _pump = Task.CompletedTask;

        public SharedProcess(SharedStdioConnector owner, StdioUpstreamConnection connection)
        {
            _owner = owner;
            _connection = connection;
            _own = new RpcIdMapper<Lane>(_ids, null);
        }

        public int ProcessId => _connection.ProcessId;

        public bool IsEnded => Volatile.Read(ref _ended) != 0;

        public RpcIdSpace<Lane> Ids => _ids;

        private string Name => _owner.Name;

        private ILogger Logger => _owner._logger;

        public void Start() => _pump = Task.Run(PumpAsync);

        /// <summary>A new lane, or null when the process has ended (the caller spawns another).</summary>
        public Lane? TryOpenLane()
        {
            if (IsEnded)
            {
                return null;
            }
            var lane = new Lane(this, Interlocked.Increment(ref _lanesOpened));
            _lanes.TryAdd(lane, 0);
            // End sets _ended before it walks the lanes: a lane added after that walk sees it here.
            if (IsEnded)
            {
                _lanes.TryRemove(lane, out _);
                return null;
            }
            return lane;
        }

        // ------------------------------------------------------------------ from a lane

        /// <summary>
        /// One message from a lane. <paramref name="span"/> holds <paramref name="message"/>'s bytes, and is read only
        /// before this returns (the caller may reuse it); <paramref name="message"/> is forwarded as it is when no id changes.
        /// </summary>
        public ValueTask SendAsync(Lane lane, ReadOnlySequence<byte> message, ReadOnlySpan<byte> span, long correlation, CancellationToken cancellationToken)
        {
            if (JsonRpcScanner.Scan(span, out var scan, _owner._scanner) != ScanStatus.Ok)
            {
                return ValueTask.FromException(new UpstreamException($"cannot forward the message to the shared upstream: {scan.Error}"));
            }
            switch (scan.Kind)
            {
                case JsonRpcMessageKind.Request when scan.Method == McpMethod.Initialize:
                    return InitializeAsync(lane, span, scan, correlation, cancellationToken);
                case JsonRpcMessageKind.Request:
                    return SendRequestAsync(lane.Ids, span, scan, correlation, null, cancellationToken);
                case JsonRpcMessageKind.Notification when scan.Method == McpMethod.NotificationsCancelled:
                    return SendCancellationAsync(lane, span, scan, cancellationToken);
                case JsonRpcMessageKind.Notification when scan.Method == McpMethod.NotificationsInitialized:
                    // The process was initialized once; every later session's initialized would be a second one.
                    return Interlocked.Exchange(ref _initializedSent, 1) == 0 ? _connection.SendAsync(message, 0, cancellationToken) : default;
                case JsonRpcMessageKind.Notification:
                    return _connection.SendAsync(message, 0, cancellationToken);
                case JsonRpcMessageKind.Response or JsonRpcMessageKind.ErrorResponse:
                    return SendAnswerAsync(lane, message, span, scan, cancellationToken);
                default:
                    return ValueTask.FromException(new UpstreamException("a batch cannot be forwarded to a shared upstream; send its messages one by one"));
            }
        }

        /// <summary>Maps a request's id (and progress token) and queues it on stdin; the route goes again if it cannot be queued.</summary>
        private ValueTask SendRequestAsync(RpcIdMapper<Lane> ids, ReadOnlySpan<byte> span, in JsonRpcScan scan, long correlation, object? tag,
            CancellationToken cancellationToken)
        {
            var mapped = ids.MapRequest(span, scan, correlation, tag);
            ValueTask send;
            try
            {
                send = mapped.Span.Length > _owner._limits.MaxMessageBytes
                    ? ValueTask.FromException(new UpstreamException($"the message exceeds the {_owner._limits.MaxMessageBytes}-byte limit once its id is mapped for the shared upstream"))
                    // The connection copies the message before it returns (it queues a copy of its own), so the
                    // pooled buffer can go back at once, whether the send completed or waits for room.
                    : _connection.SendAsync(mapped.Sequence, mapped.UpstreamId, cancellationToken);
            }
            catch
            {
                ids.Forget(mapped.UpstreamId);
                throw;
            }
            finally
            {
                mapped.Dispose();
            }
            return send.IsCompletedSuccessfully ? default : ForgetOnFailureAsync(send, ids, mapped.UpstreamId);
        }

        private static async ValueTask ForgetOnFailureAsync(ValueTask send, RpcIdMapper<Lane> ids, long upstreamId)
        {
            try
            {
                await send.ConfigureAwait(false);
            }
            catch
            {
                ids.Forget(upstreamId);
                throw;
            }
        }

        private ValueTask SendCancellationAsync(Lane lane, ReadOnlySpan<byte> span, in JsonRpcScan scan, CancellationToken cancellationToken)
        {
            if (!lane.Ids.TryMapCancellation(span, scan, out var mapped))
            {
                UpstreamLog.SharedMessageUnrouted(Logger, Name, "cancellation of a request not in flight");
                return default;
            }
            try
            {
                return _connection.SendAsync(mapped.Sequence, 0, cancellationToken);
            }
            finally
            {
                mapped.Dispose();
            }
        }

        /// <summary>A lane answers a server-to-client request: only one that was routed to it, with the server's id as it came.</summary>
        private ValueTask SendAnswerAsync(Lane lane, ReadOnlySequence<byte> message, ReadOnlySpan<byte> span, in JsonRpcScan scan, CancellationToken cancellationToken)
        {
            if (RpcId.TryCreate(scan.Id.SliceOf(span), out var key) && _serverRequests.TryGetValue(key, out var request)
                && ReferenceEquals(request.Lane, lane) && _serverRequests.TryRemove(new KeyValuePair<RpcId, ServerRequest>(key, request)))
            {
                return _connection.SendAsync(message, 0, cancellationToken);
            }
            UpstreamLog.SharedMessageUnrouted(Logger, Name, "session's answer to a request the server did not send it");
            return default;
        }

        /// <summary>
        /// A lane's <c>initialize</c>: answered from the kept result, or queued behind the one in flight, or (the
        /// first) sent to the process.
        /// </summary>
        private ValueTask InitializeAsync(Lane lane, ReadOnlySpan<byte> span, in JsonRpcScan scan, long correlation, CancellationToken cancellationToken)
        {
            var request = new InitializeRequest(lane, span.ToArray(), scan.Id.SliceOf(span).ToArray(), correlation);
            byte[]? result;
            var send = false;
            lock (_initializeGate)
            {
                result = _initializeResult;
                if (result is null)
                {
                    if (_initializing is null)
                    {
                        _initializing = request;
                        send = true;
                    }
                    else
                    {
                        _initializeWaiting.Add(request);
                    }
                }
            }
            if (result is not null)
            {
                AnswerInitialize(request, result);
                return default;
            }
            return send ? SendInitializeAsync(request, cancellationToken) : default;
        }

        private ValueTask SendInitializeAsync(InitializeRequest request, CancellationToken cancellationToken)
        {
            JsonRpcScanner.Scan(request.Message, out var scan, _owner._scanner); // scanned before: cannot fail
            var send = SendRequestAsync(_own, request.Message, scan, request.Correlation, request, cancellationToken);
            _ = WatchInitializeAsync(request);
            return send.IsCompletedSuccessfully ? default : InitializeSendFailedAsync(send, request);
        }

        /// <summary>The initialize did not leave (the process is going, or the sender gave up): the next waiting lane sends its own.</summary>
        private async ValueTask InitializeSendFailedAsync(ValueTask send, InitializeRequest request)
        {
            try
            {
                await send.ConfigureAwait(false);
            }
            catch
            {
                InitializeRequest? next = null;
                lock (_initializeGate)
                {
                    if (ReferenceEquals(_initializing, request))
                    {
                        _initializing = null;
                        if (_initializeWaiting.Count > 0)
                        {
                            next = _initializing = _initializeWaiting[0];
                            _initializeWaiting.RemoveAt(0);
                        }
                    }
                }
                if (next is not null && !IsEnded)
                {
                    _ = SendQuietlyAsync(SendInitializeAsync(next, CancellationToken.None));
                }
                throw;
            }
        }

        /// <summary>A process that does not answer its initialize in time is of no use to anyone: it is stopped (and respawned on the next connect).</summary>
        private async Task WatchInitializeAsync(InitializeRequest request)
        {
            try
            {
                await Task.Delay(_owner._limits.UpstreamTimeout, _lifetime.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            bool stillWaiting;
            lock (_initializeGate)
            {
                stillWaiting = ReferenceEquals(_initializing, request);
            }
            if (stillWaiting)
            {
                UpstreamLog.SharedInitializeTimedOut(Logger, Name, ProcessId, (int)_owner._limits.UpstreamTimeout.TotalMilliseconds);
                End(new UpstreamException("the shared upstream process did not answer initialize in time"));
                await DisposeConnectionAsync().ConfigureAwait(false);
            }
        }

        private void AnswerInitialize(InitializeRequest request, byte[] result)
        {
            var answer = new byte[ResultPrefix.Length + request.RawId.Length + 10 + result.Length + 1];
            var at = 0;
            ResultPrefix.CopyTo(answer);
            at += ResultPrefix.Length;
            request.RawId.CopyTo(answer, at);
            at += request.RawId.Length;
            ",\"result\":"u8.CopyTo(answer.AsSpan(at));
            at += 10;
            result.CopyTo(answer, at);
            at += result.Length;
            answer[at] = (byte)'}';
            UpstreamLog.SharedInitializeAnswered(Logger, Name, ProcessId);
            _ = request.Lane.EmitAsync(answer);
        }

        /// <summary>
        /// The process answered the first initialize: a result is kept and answers everyone waiting; an error goes to
        /// the lane that sent it, and the next waiting lane's initialize is sent instead.
        /// </summary>
        private ValueTask OnInitializeAnsweredAsync(InitializeRequest request, byte[]? result, byte[] answer)
        {
            List<InitializeRequest> waiting = [];
            InitializeRequest? next = null;
            lock (_initializeGate)
            {
                if (!ReferenceEquals(_initializing, request))
                {
                    return default;
                }
                _initializing = null;
                if (result is not null)
                {
                    _initializeResult = result;
                    waiting.AddRange(_initializeWaiting);
                    _initializeWaiting.Clear();
                }
                else if (_initializeWaiting.Count > 0)
                {
                    next = _initializing = _initializeWaiting[0];
                    _initializeWaiting.RemoveAt(0);
                }
            }
            foreach (var other in waiting)
            {
                AnswerInitialize(other, result!);
            }
            if (next is not null)
            {
                _ = SendQuietlyAsync(SendInitializeAsync(next, CancellationToken.None));
            }
            return request.Lane.EmitAsync(answer);
        }

        // ------------------------------------------------------------------ from the process

        private async Task PumpAsync()
        {
            try
            {
                await foreach (var ev in _connection.Events.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
                {
                    if (ev.Kind == UpstreamEventKind.SendFailed)
                    {
                        OnSendFailed(ev);
                    }
                    else
                    {
                        await OnMessageAsync(ev.Payload).ConfigureAwait(false);
                    }
                }
            }
            catch (Exception ex)
            {
                UpstreamLog.ConnectionFailed(Logger, Name, "the shared upstream's reader failed: " + ex.Message);
            }

            UpstreamException reason;
            try
            {
                await _connection.Completion.ConfigureAwait(false);
                reason = new UpstreamException("the shared upstream process was stopped");
            }
            catch (UpstreamException ex)
            {
                reason = ex;
            }
            catch (Exception ex)
            {
                reason = new UpstreamException(ex.Message, ex);
            }
            End(reason);
            await DisposeConnectionAsync().ConfigureAwait(false);
        }

        private void OnSendFailed(in UpstreamEvent ev)
        {
            if (ev.Correlation != 0 && _ids.TryTake(ev.Correlation, out var route) && route.Lane is { } lane)
            {
                lane.EmitSendFailed(route.Correlation, ev.Error ?? "the upstream did not accept the message");
            }
        }

        private ValueTask OnMessageAsync(ReadOnlyMemory<byte> payload)
        {
            var span = payload.Span;
            if (JsonRpcScanner.Scan(span, out var scan, _owner._scanner) != ScanStatus.Ok)
            {
                UpstreamLog.SharedMessageInvalid(Logger, Name, scan.Error ?? "invalid");
                return default;
            }
            switch (scan.Kind)
            {
                case JsonRpcMessageKind.Response or JsonRpcMessageKind.ErrorResponse:
                    if (!_ids.TryRouteResponse(span, scan, out var route, out var answer))
                    {
                        UpstreamLog.SharedMessageUnrouted(Logger, Name, "response");
                        return default;
                    }
                    if (route.Lane is { } lane)
                    {
                        return lane.EmitAsync(answer);
                    }
                    if (route.Tag is InitializeRequest initialize)
                    {
                        var result = scan.Kind == JsonRpcMessageKind.Response
                            && RpcIdMapper<Lane>.TryFindMember(span, new TokenRange(0, span.Length), "result"u8, out var range)
                            ? range.SliceOf(span).ToArray()
                            : null;
                        return OnInitializeAnsweredAsync(initialize, result, answer);
                    }
                    return default;
                case JsonRpcMessageKind.Request:
                    return OnServerRequestAsync(payload, span, scan);
                case JsonRpcMessageKind.Notification:
                    return OnServerNotificationAsync(payload, span, scan);
                case JsonRpcMessageKind.Batch:
                    return OnBatchAsync(payload);
                default:
                    return default;
            }
        }

        private async ValueTask OnBatchAsync(ReadOnlyMemory<byte> payload)
        {
            var elements = new List<TokenRange>();
            foreach (var element in JsonRpcScanner.EnumerateBatch(payload.Span))
            {
                elements.Add(element);
            }
            foreach (var element in elements)
            {
                await OnMessageAsync(payload.Slice(element.Start, element.Length)).ConfigureAwait(false);
            }
        }

        /// <summary>
        /// A server-to-client request: <c>ping</c> is answered here; anything else goes to the one lane with requests
        /// in flight (it must be about one of them), or is refused when there is not exactly one.
        /// </summary>
        private ValueTask OnServerRequestAsync(ReadOnlyMemory<byte> payload, ReadOnlySpan<byte> span, in JsonRpcScan scan)
        {
            var rawId = scan.Id.SliceOf(span);
            if (scan.Method == McpMethod.Ping)
            {
                return SendQuietlyAsync(_connection.SendAsync(new ReadOnlySequence<byte>(Pong(rawId)), 0, CancellationToken.None));
            }
            Lane? only = null;
            var busy = 0;
            foreach (var (lane, _) in _lanes)
            {
                if (lane.Ids.InFlight > 0)
                {
                    busy++;
                    only = lane;
                }
            }
            if (busy == 1 && RpcId.TryCreate(rawId, out var key))
            {
                _serverRequests[key] = new ServerRequest(only!, rawId.ToArray());
                return only!.EmitAsync(payload);
            }
            var why = busy == 0 ? "no session has a request in flight" : $"{busy} sessions have requests in flight";
            var method = McpMethods.GetName(scan.Method) ?? Encoding.UTF8.GetString(scan.MethodName.SliceOf(span)).Trim('"');
            UpstreamLog.ServerRequestUnroutable(Logger, Name, method, why);
            var error = JsonRpcResponses.Error(rawId, ErrorCodes.InternalError, SessionMessages.SharedRequestUnroutable(Name, method, why));
            return SendQuietlyAsync(_connection.SendAsync(new ReadOnlySequence<byte>(error), 0, CancellationToken.None));
        }

        private ValueTask OnServerNotificationAsync(ReadOnlyMemory<byte> payload, ReadOnlySpan<byte> span, in JsonRpcScan scan)
        {
            switch (scan.Method)
            {
                case McpMethod.NotificationsProgress:
                    if (_ids.TryRouteProgress(span, scan, out var route, out var rewritten) && route.Lane is { } lane)
                    {
                        return lane.EmitAsync(rewritten);
                    }
                    UpstreamLog.SharedMessageUnrouted(Logger, Name, "progress notification");
                    return default;
                case McpMethod.NotificationsCancelled:
                    // The server gives up on one of its own requests: it goes where that request went.
                    if (RpcIdMapper<Lane>.TryFindMember(span, scan.Params, "requestId"u8, out var requestId)
                        && RpcId.TryCreate(requestId.SliceOf(span), out var key) && _serverRequests.TryRemove(key, out var request))
                    {
                        return request.Lane.EmitAsync(payload);
                    }
                    UpstreamLog.SharedMessageUnrouted(Logger, Name, "cancellation");
                    return default;
                default:
                    return BroadcastAsync(payload);
            }
        }

        private async ValueTask BroadcastAsync(ReadOnlyMemory<byte> payload)
        {
            foreach (var (lane, _) in _lanes)
            {
                await lane.EmitAsync(payload).ConfigureAwait(false);
            }
        }

        private static byte[] Pong(ReadOnlySpan<byte> rawId)
        {
            var pong = new byte[ResultPrefix.Length + rawId.Length + 13];
            ResultPrefix.CopyTo(pong);
            rawId.CopyTo(pong.AsSpan(ResultPrefix.Length));
            ",\"result\":{}}"u8.CopyTo(pong.AsSpan(ResultPrefix.Length + rawId.Length));
            return pong;
        }

        private async ValueTask SendQuietlyAsync(ValueTask send)
        {
            try
            {
                await send.ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is UpstreamException or ArgumentException or OperationCanceledException)
            {
                UpstreamLog.SendFailed(Logger, Name, 0, ex.Message);
            }
        }

        // ------------------------------------------------------------------ ending

        /// <summary>A lane closed: its routes go (later answers are dropped); server requests it owed are refused.</summary>
        public void Remove(Lane lane)
        {
            if (!_lanes.TryRemove(lane, out _))
            {
                return; // the process ended first
            }
            lane.Ids.Clear();
            foreach (var (key, request) in _serverRequests)
            {
                if (ReferenceEquals(request.Lane, lane) && _serverRequests.TryRemove(new KeyValuePair<RpcId, ServerRequest>(key, request)))
                {
                    var error = JsonRpcResponses.Error(request.RawId, ErrorCodes.InternalError, SessionMessages.SharedRequestOrphaned(Name));
                    _ = SendQuietlyAsync(_connection.SendAsync(new ReadOnlySequence<byte>(error), 0, CancellationToken.None));
                }
            }
        }

        /// <summary>The process is gone (or going): every lane fails with <paramref name="reason"/>. Once.</summary>
        private void End(UpstreamException reason)
        {
            if (Interlocked.Exchange(ref _ended, 1) != 0)
            {
                return;
            }
            try
            {
                _lifetime.Cancel();
            }
            catch (AggregateException)
            {
            }
            var lanes = 0;
            foreach (var (lane, _) in _lanes)
            {
                lanes++;
                lane.Fault(reason);
            }
            _lanes.Clear();
            _ids.Clear();
            _serverRequests.Clear();
            UpstreamLog.SharedProcessEnded(Logger, Name, ProcessId, reason.Message, lanes);
        }

        public async Task StopAsync()
        {
            End(new UpstreamException($"upstream '{Name}' was stopped"));
            await DisposeConnectionAsync().ConfigureAwait(false);
            try
            {
                await _pump.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
            }
        }

        private async Task DisposeConnectionAsync()
        {
            try
            {
                await _connection.DisposeAsync().ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is IOException or InvalidOperationException or UpstreamException)
            {
                UpstreamLog.ConnectionFailed(Logger, Name, ex.Message);
            }
        }

        public override string ToString() => $"{Name} (stdio, shared process {ProcessId})";
    }

    /// <summary>One session's view of the shared process.</summary>
    private sealed class Lane : IUpstreamConnection
    {
        private readonly SharedProcess _process;
        private readonly UpstreamEventSink _sink = new();
        private readonly int _number;
        private int _disposed;

        public Lane(SharedProcess process, int number)
        {
            _process = process;
            _number = number;
            Ids = new RpcIdMapper<Lane>(process.Ids, this);
        }

        public RpcIdMapper<Lane> Ids { get; }

        public string Transport => "stdio";

        public ChannelReader<UpstreamEvent> Events => _sink.Reader;

        public Task Completion => _sink.Completion;

        public ValueTask SendAsync(ReadOnlySequence<byte> message, long correlation, CancellationToken cancellationToken)
        {
            if (_sink.IsClosed)
            {
                return ValueTask.FromException(_sink.ClosedException());
            }
            if (message.IsSingleSegment)
            {
                return _process.SendAsync(this, message, message.FirstSpan, correlation, cancellationToken);
            }
            // A body split over segments: one contiguous copy to scan and map, back to the pool once handed on.
            var length = (int)message.Length;
            var buffer = ArrayPool<byte>.Shared.Rent(length);
            try
            {
                message.CopyTo(buffer);
                return _process.SendAsync(this, message, buffer.AsSpan(0, length), correlation, cancellationToken);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }

        /// <summary>Hands one message to the session; waits while its channel is full. The payload is never changed afterwards.</summary>
        public ValueTask EmitAsync(ReadOnlyMemory<byte> payload)
        {
            var emit = _sink.EmitAsync(new UpstreamEvent(UpstreamEventKind.Message, payload, 0));
            return emit.IsCompletedSuccessfully ? default : new ValueTask(emit.AsTask());
        }

        public void EmitSendFailed(long correlation, string error) => _sink.TryEmit(new UpstreamEvent(UpstreamEventKind.SendFailed, default, correlation, error));

        public void Fault(UpstreamException reason) => _sink.Close(new UpstreamException(reason.Message, reason) { SessionGone = reason.SessionGone });

        public ValueTask DisposeAsync()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0)
            {
                _process.Remove(this);
                _sink.Close(null);
            }
            return default;
        }

        public override string ToString() => $"{_process} lane {_number}";
    }
}
