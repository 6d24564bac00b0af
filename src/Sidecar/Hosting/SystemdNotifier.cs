using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging;

namespace Sidecar.Hosting;

/// <summary>
/// The systemd notify protocol (<c>sd_notify(3)</c>) spoken by Sidecar itself, for a <c>Type=notify</c> unit
/// (deploy/systemd/sidecar.service): one Unix datagram per message to <c>$NOTIFY_SOCKET</c>, each message
/// newline-separated <c>KEY=value</c> assignments, and the watchdog's <c>WATCHDOG=1</c> every half
/// <c>$WATCHDOG_USEC</c> while the gateway is healthy. No libsystemd: the protocol is a stable interface
/// (systemd.io/PORTABILITY_AND_STABILITY) and a few lines over <see cref="Socket"/>.
/// </summary>
/// <remarks>
/// <para>
/// Datagrams, exactly (a <c>STATUS=</c> line only when a status is given):
/// <list type="bullet">
/// <item><see cref="Ready"/>: <c>READY=1\nSTATUS=…\nMAINPID=&lt;pid&gt;</c>.</item>
/// <item><see cref="Reloading"/>: <c>RELOADING=1\nSTATUS=…\nMONOTONIC_USEC=&lt;µs&gt;</c>.</item>
/// <item><see cref="Stopping"/>: <c>STOPPING=1\nSTATUS=…</c>.</item>
/// <item><see cref="Status"/>: <c>STATUS=…</c>.</item>
/// <item>The watchdog: <c>WATCHDOG=1</c>.</item>
/// </list>
/// </para>
/// <para>
/// <c>MAINPID</c> is what systemd already knows when it started us (it is a no-op then) and right when a wrapper
/// started us instead. <c>MONOTONIC_USEC</c> is <c>CLOCK_MONOTONIC</c> in microseconds: systemd ≥ 253
/// (<c>Type=notify-reload</c>) takes a reload as acknowledged only with a <c>MONOTONIC_USEC</c> no earlier than the
/// moment it sent the signal, and ignores it for <c>Type=notify</c>. It comes from <see cref="Stopwatch.GetTimestamp"/>,
/// which on Linux is <c>clock_gettime(CLOCK_MONOTONIC)</c> in nanoseconds (the same clock, checked against it in
/// SystemdNotifierTests). Not <see cref="Environment.TickCount64"/>: monotonic too, but <c>CLOCK_MONOTONIC_COARSE</c>
/// in milliseconds, so up to a tick (~4 ms) behind, which could date a reload before the signal that asked for it.
/// </para>
/// <para>
/// A message that cannot be sent (the socket is gone, its queue is full: the socket never blocks) makes the method
/// return false; the first failure is logged as a warning, later ones at Debug. Nothing here throws at the caller.
/// The environment is read, never changed (<c>sd_notify</c>'s <c>unset_environment</c> is false): child processes,
/// such as stdio upstreams, inherit <c>NOTIFY_SOCKET</c>, and <c>NotifyAccess=main</c> makes systemd ignore them.
/// </para>
/// </remarks>
internal sealed partial class SystemdNotifier : IDisposable
{
    public const string NotifySocketVariable = "NOTIFY_SOCKET";
    public const string WatchdogUsecVariable = "WATCHDOG_USEC";
    public const string WatchdogPidVariable = "WATCHDOG_PID";

    /// <summary>The longest period a <see cref="Timer"/> takes (0xFFFFFFFE ms, about 49 days).</summary>
    private static readonly TimeSpan MaxInterval = TimeSpan.FromMilliseconds(uint.MaxValue - 1);
    private static readonly byte[] s_watchdog = "WATCHDOG=1"u8.ToArray();

    private readonly Socket _socket;
    private readonly UnixDomainSocketEndPoint _endPoint;
    private readonly ILogger _logger;
    private readonly int _pid;
    private readonly Lock _lock = new();
    private Timer? _watchdog;
    private Func<bool>? _healthy;
    private int _ticking;
    private bool _unhealthy;
    private int _failed;
    private volatile bool _disposed;

    private SystemdNotifier(string address, UnixDomainSocketEndPoint endPoint, Socket socket, TimeSpan? watchdogInterval, int pid, ILogger logger)
    {
        Address = address;
        _endPoint = endPoint;
        _socket = socket;
        WatchdogInterval = watchdogInterval;
        _pid = pid;
        _logger = logger;
    }

    /// <summary>The socket's address as <c>$NOTIFY_SOCKET</c> gave it: an absolute path, or <c>@name</c> for an abstract socket.</summary>
    public string Address { get; }

    /// <summary>
    /// How often the watchdog pings: half of <c>$WATCHDOG_USEC</c>, as <c>sd_watchdog_enabled(3)</c> advises. Null when
    /// systemd asked for no watchdog, or asked it of another process (<c>$WATCHDOG_PID</c>).
    /// </summary>
    public TimeSpan? WatchdogInterval { get; }

    /// <summary>
    /// The notifier for the socket in <c>$NOTIFY_SOCKET</c>; null when it is unset or empty (not started by systemd, or
    /// not as <c>Type=notify</c>) or names no socket Sidecar can use (logged).
    /// </summary>
    public static SystemdNotifier? FromEnvironment(ILogger logger) => Create(
        Environment.GetEnvironmentVariable(NotifySocketVariable),
        Environment.GetEnvironmentVariable(WatchdogUsecVariable),
        Environment.GetEnvironmentVariable(WatchdogPidVariable),
        Environment.ProcessId,
        logger);

    /// <summary>
    /// <see cref="FromEnvironment"/> with the three variables and this process's id given (tests do not change the
    /// process's environment). <paramref name="notifySocket"/>: an absolute path, or <c>@name</c> for the abstract
    /// socket <c>\0name</c>; anything else (a relative path, systemd 254's <c>vsock:</c>) is refused with a warning.
    /// </summary>
    internal static SystemdNotifier? Create(string? notifySocket, string? watchdogUsec, string? watchdogPid, int pid, ILogger logger)
    {
        if (string.IsNullOrEmpty(notifySocket))
        {
            return null;
        }
        if (!TryEndPoint(notifySocket, out var endPoint, out var reason))
        {
            Log.UnusableAddress(logger, notifySocket, reason);
            return null;
        }
        Socket socket;
        try
        {
            // Non-blocking: a datagram to a socket whose queue is full fails at once (EAGAIN) instead of holding the
            // caller (a Kestrel lifetime callback, a timer thread).
            socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified) { Blocking = false };
        }
        catch (Exception ex) when (ex is SocketException or PlatformNotSupportedException)
        {
            // E.g. RestrictAddressFamilies= without AF_UNIX.
            Log.NoSocket(logger, ex.Message);
            return null;
        }
        return new SystemdNotifier(notifySocket, endPoint, socket, WatchdogIntervalOf(watchdogUsec, watchdogPid, pid, logger), pid, logger);
    }

    /// <summary>Start-up is complete (or a reload ended): <c>READY=1</c>, the status, and <c>MAINPID</c>.</summary>
    public bool Ready(string? status = null)
        => Send("READY=1", status, "MAINPID=" + _pid.ToString(CultureInfo.InvariantCulture));

    /// <summary>A reload begins: <c>RELOADING=1</c> and <c>MONOTONIC_USEC</c>. Send <see cref="Ready"/> when it ends, applied or refused.</summary>
    public bool Reloading(string? status = null)
        => Send("RELOADING=1", status, "MONOTONIC_USEC=" + MonotonicMicroseconds(Stopwatch.GetTimestamp()).ToString(CultureInfo.InvariantCulture));

    /// <summary>Shutdown begins: <c>STOPPING=1</c>.</summary>
    public bool Stopping(string? status = null) => Send("STOPPING=1", status, null);

    /// <summary>The one-line status <c>systemctl status</c> shows.</summary>
    public bool Status(string status)
    {
        ArgumentNullException.ThrowIfNull(status);
        return Send(null, status, null);
    }

    /// <summary>
    /// Starts the watchdog when systemd asked for one (<see cref="WatchdogInterval"/> is not null; else does nothing):
    /// <c>WATCHDOG=1</c> now and then every interval, each time only if <paramref name="healthy"/> returns true. An
    /// unhealthy gateway (or a <paramref name="healthy"/> that throws) sends nothing, and systemd restarts it once
    /// <c>WatchdogSec</c> has passed since the last ping; a check that recovers before then changes nothing. The pings
    /// run on a <see cref="Timer"/>: this returns at once, and <paramref name="healthy"/> must not block. A second call
    /// does nothing.
    /// </summary>
    public void StartWatchdog(Func<bool> healthy)
    {
        ArgumentNullException.ThrowIfNull(healthy);
        if (WatchdogInterval is not { } interval)
        {
            return;
        }
        lock (_lock)
        {
            if (_disposed || _watchdog is not null)
            {
                return;
            }
            _healthy = healthy;
            _watchdog = new Timer(static state => ((SystemdNotifier)state!).Tick(), this, TimeSpan.Zero, interval);
        }
        Log.WatchdogStarted(_logger, (long)interval.TotalMilliseconds, (long)(interval * 2).TotalMilliseconds);
    }

    public void Dispose()
    {
        Timer? watchdog;
        lock (_lock)
        {
            _disposed = true;
            watchdog = _watchdog;
            _watchdog = null;
        }
        watchdog?.Dispose();
        _socket.Dispose();
    }

    /// <summary>A <see cref="Stopwatch"/> timestamp in microseconds (no overflow for any timestamp).</summary>
    internal static long MonotonicMicroseconds(long timestamp)
    {
        var frequency = Stopwatch.Frequency;
        return timestamp / frequency * 1_000_000 + timestamp % frequency * 1_000_000 / frequency;
    }

    private static bool TryEndPoint(string address, out UnixDomainSocketEndPoint endPoint, out string reason)
    {
        endPoint = null!;
        string path;
        if (address.Length > 1 && address[0] == '@')
        {
            // The abstract namespace (Linux): "@name" stands for the address "\0name", which UnixDomainSocketEndPoint
            // takes as abstract (no file, no trailing NUL).
            path = string.Concat("\0", address.AsSpan(1));
        }
        else if (address[0] == '/')
        {
            path = address;
        }
        else
        {
            reason = "neither an absolute path nor @name";
            return false;
        }
        try
        {
            endPoint = new UnixDomainSocketEndPoint(path);
            reason = "";
            return true;
        }
        catch (ArgumentException ex)
        {
            // Longer than sun_path (108 bytes).
            reason = ex.Message;
            return false;
        }
    }

    private static TimeSpan? WatchdogIntervalOf(string? watchdogUsec, string? watchdogPid, int pid, ILogger logger)
    {
        if (string.IsNullOrEmpty(watchdogUsec))
        {
            return null;
        }
        if (!ulong.TryParse(watchdogUsec, NumberStyles.None, CultureInfo.InvariantCulture, out var usec) || usec == 0)
        {
            Log.InvalidWatchdog(logger, WatchdogUsecVariable, watchdogUsec);
            return null;
        }
        // sd_watchdog_enabled(3): a WATCHDOG_PID that is not ours means the watchdog is another process's (we are
        // its child and inherited the variables).
        if (!string.IsNullOrEmpty(watchdogPid))
        {
            if (!int.TryParse(watchdogPid, NumberStyles.None, CultureInfo.InvariantCulture, out var owner))
            {
                Log.InvalidWatchdog(logger, WatchdogPidVariable, watchdogPid);
                return null;
            }
            if (owner != pid)
            {
                Log.OtherProcessWatchdog(logger, owner, pid);
                return null;
            }
        }
        var half = usec / 2;
        return half >= (ulong)MaxInterval.TotalMicroseconds ? MaxInterval : TimeSpan.FromMicroseconds((long)Math.Max(half, 1000));
    }

    private void Tick()
    {
        // A tick that outlasts the period (a stuck health check) is not joined by the next one.
        if (Interlocked.Exchange(ref _ticking, 1) == 1)
        {
            return;
        }
        try
        {
            bool healthy;
            Exception? error = null;
            try
            {
                healthy = _healthy!();
            }
            catch (Exception ex)
            {
                healthy = false;
                error = ex;
            }
            if (!healthy)
            {
                // Logged when the gateway turns unhealthy, not at every withheld ping.
                if (!_unhealthy)
                {
                    _unhealthy = true;
                    Log.Unhealthy(_logger, error, (long)(WatchdogInterval!.Value * 2).TotalMilliseconds);
                }
                return;
            }
            if (_unhealthy)
            {
                _unhealthy = false;
                Log.HealthyAgain(_logger);
            }
            Send(s_watchdog, "WATCHDOG=1");
        }
        finally
        {
            Volatile.Write(ref _ticking, 0);
        }
    }

    private bool Send(string? state, string? status, string? extra)
    {
        var message = new StringBuilder(64);
        if (state is not null)
        {
            message.Append(state);
        }
        if (status is not null)
        {
            if (message.Length > 0)
            {
                message.Append('\n');
            }
            message.Append("STATUS=");
            AppendOneLine(message, status);
        }
        if (extra is not null)
        {
            message.Append('\n').Append(extra);
        }
        return Send(Encoding.UTF8.GetBytes(message.ToString()), state ?? "STATUS");
    }

    private bool Send(byte[] datagram, string what)
    {
        if (_disposed)
        {
            return false;
        }
        try
        {
            _socket.SendTo(datagram, SocketFlags.None, _endPoint);
            Log.Sent(_logger, what);
            return true;
        }
        catch (ObjectDisposedException)
        {
            // Disposed while sending (a last watchdog tick during shutdown).
            return false;
        }
        catch (SocketException ex)
        {
            if (Interlocked.Exchange(ref _failed, 1) == 0)
            {
                Log.SendFailed(_logger, what, Address, ex.Message);
            }
            else
            {
                Log.SendFailedAgain(_logger, what, Address, ex.Message);
            }
            return false;
        }
    }

    /// <summary>A status is one assignment: a line break in it would start another (<c>…\nREADY=1</c>), so every control character becomes a space.</summary>
    private static void AppendOneLine(StringBuilder message, string status)
    {
        foreach (var c in status)
        {
            message.Append(char.IsControl(c) ? ' ' : c);
        }
    }

    private static partial class Log
    {
        [LoggerMessage(Level = LogLevel.Warning, Message = "NOTIFY_SOCKET={Address} is not a socket Sidecar can notify ({Reason}): no systemd notifications")]
        public static partial void UnusableAddress(ILogger logger, string address, string reason);

        [LoggerMessage(Level = LogLevel.Warning, Message = "Cannot make a Unix datagram socket for systemd notifications: {Error}")]
        public static partial void NoSocket(ILogger logger, string error);

        [LoggerMessage(Level = LogLevel.Warning, Message = "{Variable}={Value} is not valid: no systemd watchdog")]
        public static partial void InvalidWatchdog(ILogger logger, string variable, string value);

        [LoggerMessage(Level = LogLevel.Debug, Message = "The systemd watchdog is for process {Owner}, not this one ({Pid}): no watchdog pings")]
        public static partial void OtherProcessWatchdog(ILogger logger, int owner, int pid);

        [LoggerMessage(Level = LogLevel.Information, Message = "systemd watchdog: WATCHDOG=1 every {Interval} ms while the gateway is healthy (WatchdogSec {Timeout} ms)")]
        public static partial void WatchdogStarted(ILogger logger, long interval, long timeout);

        [LoggerMessage(Level = LogLevel.Error, Message = "Gateway unhealthy: no WATCHDOG=1 until it recovers; systemd restarts Sidecar {Timeout} ms after the last one")]
        public static partial void Unhealthy(ILogger logger, Exception? exception, long timeout);

        [LoggerMessage(Level = LogLevel.Information, Message = "Gateway healthy again: systemd watchdog pings resume")]
        public static partial void HealthyAgain(ILogger logger);

        [LoggerMessage(Level = LogLevel.Trace, Message = "Notified systemd: {Message}")]
        public static partial void Sent(ILogger logger, string message);

        [LoggerMessage(Level = LogLevel.Warning, Message = "Cannot notify systemd ({Message}) at {Address}: {Error}; later failures are logged at Debug")]
        public static partial void SendFailed(ILogger logger, string message, string address, string error);

        [LoggerMessage(Level = LogLevel.Debug, Message = "Cannot notify systemd ({Message}) at {Address}: {Error}")]
        public static partial void SendFailedAgain(ILogger logger, string message, string address, string error);
    }
}
