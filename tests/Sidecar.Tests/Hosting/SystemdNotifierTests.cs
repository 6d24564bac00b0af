using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Extensions.Logging;
using Sidecar.Hosting;

namespace Sidecar.Tests.Hosting;

/// <summary>
/// <see cref="SystemdNotifier"/> against a real Unix datagram socket standing in for systemd's (in a temporary
/// folder, or in the abstract namespace): the exact datagrams, the watchdog's pings, and every way of not notifying.
/// The notifier is made with <see cref="SystemdNotifier.Create"/>, so no test changes the process's environment.
/// </summary>
public sealed class SystemdNotifierTests : IDisposable
{
    private const int Pid = 4242;
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(2);

    private readonly string _folder = Directory.CreateTempSubdirectory("sidecar-notify-").FullName;
    private readonly ListLogger _log = new();

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Fact]
    public void Ready_sends_READY_the_status_and_MAINPID()
    {
        using var systemd = NotifySocket.Bind(Path.Combine(_folder, "notify"));
        using var notifier = Create(systemd.Address);

        Assert.True(notifier.Ready("listening on 127.0.0.1:8787"));
        Assert.Equal("READY=1\nSTATUS=listening on 127.0.0.1:8787\nMAINPID=4242", systemd.Receive(Bound));
        Assert.True(notifier.Ready());
        Assert.Equal("READY=1\nMAINPID=4242", systemd.Receive(Bound));
    }

    [LinuxFact]
    public void An_abstract_socket_is_named_with_an_at_sign()
    {
        var name = "sidecar-test-" + Guid.NewGuid().ToString("N");
        using var systemd = NotifySocket.Bind("\0" + name);
        using var notifier = Create("@" + name);

        Assert.Equal("@" + name, notifier.Address);
        Assert.True(notifier.Ready("up"));
        Assert.Equal("READY=1\nSTATUS=up\nMAINPID=4242", systemd.Receive(Bound));
    }

    [Fact]
    public void Reloading_sends_RELOADING_and_CLOCK_MONOTONIC_in_microseconds()
    {
        using var systemd = NotifySocket.Bind(Path.Combine(_folder, "notify"));
        using var notifier = Create(systemd.Address);

        var before = SystemdNotifier.MonotonicMicroseconds(Stopwatch.GetTimestamp());
        Assert.True(notifier.Reloading());
        var after = SystemdNotifier.MonotonicMicroseconds(Stopwatch.GetTimestamp());

        var lines = systemd.Receive(Bound)!.Split('\n');
        Assert.Equal(2, lines.Length);
        Assert.Equal("RELOADING=1", lines[0]);
        Assert.StartsWith("MONOTONIC_USEC=", lines[1], StringComparison.Ordinal);
        var usec = long.Parse(lines[1]["MONOTONIC_USEC=".Length..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(usec, before, after);

        Assert.True(notifier.Reloading("reloading /etc/sidecar/sidecar.json"));
        Assert.Matches(@"^RELOADING=1\nSTATUS=reloading /etc/sidecar/sidecar\.json\nMONOTONIC_USEC=[0-9]+$", systemd.Receive(Bound));
    }

    [LinuxFact]
    public void MONOTONIC_USEC_is_CLOCK_MONOTONIC()
    {
        // Stopwatch on Linux is clock_gettime(CLOCK_MONOTONIC), the clock systemd compares MONOTONIC_USEC with.
        var before = ClockMonotonicMicroseconds();
        var stopwatch = SystemdNotifier.MonotonicMicroseconds(Stopwatch.GetTimestamp());
        var after = ClockMonotonicMicroseconds();
        Assert.InRange(stopwatch, before, after);
    }

    [Fact]
    public void The_microseconds_of_a_timestamp_do_not_overflow()
    {
        Assert.Equal(0, SystemdNotifier.MonotonicMicroseconds(0));
        Assert.Equal(1_500_000, SystemdNotifier.MonotonicMicroseconds(Stopwatch.Frequency * 3 / 2));
        // Past 2.5 hours of uptime a nanosecond timestamp times 10^6 overflows a long: the division comes first.
        var large = long.MaxValue / 2;
        Assert.Equal((long)((Int128)large * 1_000_000 / Stopwatch.Frequency), SystemdNotifier.MonotonicMicroseconds(large));
    }

    [Fact]
    public void Stopping_and_Status_send_their_assignments()
    {
        using var systemd = NotifySocket.Bind(Path.Combine(_folder, "notify"));
        using var notifier = Create(systemd.Address);

        Assert.True(notifier.Stopping());
        Assert.Equal("STOPPING=1", systemd.Receive(Bound));
        Assert.True(notifier.Stopping("draining 3 calls"));
        Assert.Equal("STOPPING=1\nSTATUS=draining 3 calls", systemd.Receive(Bound));
        Assert.True(notifier.Status("2 servers, 5 sessions"));
        Assert.Equal("STATUS=2 servers, 5 sessions", systemd.Receive(Bound));
        Assert.True(notifier.Status(""));
        Assert.Equal("STATUS=", systemd.Receive(Bound));
    }

    [Fact]
    public void A_status_stays_one_assignment()
    {
        using var systemd = NotifySocket.Bind(Path.Combine(_folder, "notify"));
        using var notifier = Create(systemd.Address);

        Assert.True(notifier.Status("bad\nREADY=1\r\0x"));
        Assert.Equal("STATUS=bad READY=1  x", systemd.Receive(Bound));
    }

    [Fact]
    public void No_NOTIFY_SOCKET_means_no_notifier()
    {
        Assert.Null(SystemdNotifier.Create(null, "30000000", null, Pid, _log));
        Assert.Null(SystemdNotifier.Create("", "30000000", null, Pid, _log));
        Assert.Empty(_log.Entries);
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable(SystemdNotifier.NotifySocketVariable)))
        {
            Assert.Null(SystemdNotifier.FromEnvironment(_log));
        }
    }

    [Theory]
    [InlineData("run/systemd/notify")]
    [InlineData("vsock:2:1234")]
    [InlineData("@")]
    public void An_address_that_is_neither_a_path_nor_abstract_is_refused(string address)
    {
        Assert.Null(SystemdNotifier.Create(address, null, null, Pid, _log));
        Assert.Contains(_log.Entries, e => e.Level == LogLevel.Warning && e.Message.Contains(address, StringComparison.Ordinal));
    }

    [Fact]
    public void A_path_longer_than_sun_path_is_refused()
    {
        Assert.Null(SystemdNotifier.Create("/" + new string('x', 200), null, null, Pid, _log));
        Assert.Contains(_log.Entries, e => e.Level == LogLevel.Warning);
    }

    [Fact]
    public void A_socket_that_does_not_exist_fails_without_throwing_and_is_logged_once_as_a_warning()
    {
        using var notifier = Create(Path.Combine(_folder, "no-such-socket"));

        Assert.False(notifier.Ready("up"));
        Assert.False(notifier.Status("still here"));
        Assert.False(notifier.Stopping());
        Assert.Single(_log.Entries, e => e.Level == LogLevel.Warning);
        Assert.Equal(2, _log.Entries.Count(e => e.Level == LogLevel.Debug && e.Message.StartsWith("Cannot notify systemd", StringComparison.Ordinal)));
    }

    [Fact]
    public void Nothing_is_sent_after_Dispose()
    {
        using var systemd = NotifySocket.Bind(Path.Combine(_folder, "notify"));
        var notifier = Create(systemd.Address);
        notifier.Dispose();

        Assert.False(notifier.Ready());
        Assert.Null(systemd.Receive(TimeSpan.FromMilliseconds(200)));
        Assert.DoesNotContain(_log.Entries, e => e.Level >= LogLevel.Warning);
    }

    [Theory]
    [InlineData("30000000", null, 15_000)]
    [InlineData("200000", null, 100)]
    [InlineData("200000", "4242", 100)]
    [InlineData("1", null, 1)]
    public void The_watchdog_pings_every_half_WATCHDOG_USEC(string usec, string? pid, int expectedMilliseconds)
    {
        using var notifier = SystemdNotifier.Create(Path.Combine(_folder, "notify"), usec, pid, Pid, _log)!;
        Assert.Equal(TimeSpan.FromMilliseconds(expectedMilliseconds), notifier.WatchdogInterval);
    }

    [Theory]
    [InlineData(null, null)]
    [InlineData("", null)]
    [InlineData("0", null)]
    [InlineData("-5", null)]
    [InlineData("30s", null)]
    [InlineData("200000", "4243")]
    [InlineData("200000", "not-a-pid")]
    public void No_watchdog_unless_systemd_asked_this_process_for_one(string? usec, string? pid)
    {
        using var notifier = SystemdNotifier.Create(Path.Combine(_folder, "notify"), usec, pid, Pid, _log)!;
        Assert.Null(notifier.WatchdogInterval);
    }

    [Fact]
    public void A_watchdog_for_another_process_sends_nothing()
    {
        using var systemd = NotifySocket.Bind(Path.Combine(_folder, "notify"));
        using var notifier = SystemdNotifier.Create(systemd.Address, "200000", "4243", Pid, _log)!;

        var checks = 0;
        notifier.StartWatchdog(() => Interlocked.Increment(ref checks) > 0);
        Assert.Null(systemd.Receive(TimeSpan.FromMilliseconds(500)));
        Assert.Equal(0, Volatile.Read(ref checks));
    }

    [Fact]
    public void The_watchdog_pings_while_healthy_stops_while_unhealthy_and_resumes()
    {
        using var systemd = NotifySocket.Bind(Path.Combine(_folder, "notify"));
        using var notifier = SystemdNotifier.Create(systemd.Address, "200000", Pid.ToString(System.Globalization.CultureInfo.InvariantCulture), Pid, _log)!;
        var interval = notifier.WatchdogInterval!.Value;
        Assert.Equal(TimeSpan.FromMilliseconds(100), interval);

        var healthy = true;
        var unhealthyChecks = 0;
        notifier.StartWatchdog(() =>
        {
            var now = Volatile.Read(ref healthy);
            if (!now)
            {
                Interlocked.Increment(ref unhealthyChecks);
            }
            return now;
        });
        notifier.StartWatchdog(() => throw new InvalidOperationException("a second start is ignored"));

        // Healthy: the first ping at once, then about one per interval (at least 2 in a second; not a tight loop).
        Assert.Equal("WATCHDOG=1", systemd.Receive(Bound));
        var second = TimeSpan.FromSeconds(1);
        var window = Stopwatch.StartNew();
        var pings = 0;
        while (window.Elapsed < second)
        {
            if (systemd.Receive(TimeSpan.FromTicks(Math.Max(0, (second - window.Elapsed).Ticks))) is { } ping)
            {
                Assert.Equal("WATCHDOG=1", ping);
                pings++;
            }
        }
        Assert.InRange(pings, 2, 25);

        // Unhealthy: once a check has said so (the tick before it had sent its ping: ticks never overlap), no ping.
        Volatile.Write(ref healthy, false);
        Assert.True(SpinWait.SpinUntil(() => Volatile.Read(ref unhealthyChecks) > 0, Bound), "the watchdog never checked again");
        while (systemd.Receive(TimeSpan.Zero) is not null)
        {
        }
        // Three more checks, three withheld pings (counted in checks, not in time: a loaded machine delays the timer).
        var seen = Volatile.Read(ref unhealthyChecks);
        Assert.True(SpinWait.SpinUntil(() => Volatile.Read(ref unhealthyChecks) >= seen + 3, Bound + Bound), "the watchdog stopped checking");
        Assert.Null(systemd.Receive(TimeSpan.Zero));
        Assert.Single(_log.Entries, e => e.Level == LogLevel.Error && e.Message.StartsWith("Gateway unhealthy", StringComparison.Ordinal));

        // Healthy again: pings resume.
        Volatile.Write(ref healthy, true);
        Assert.Equal("WATCHDOG=1", systemd.Receive(Bound));
        Assert.Contains(_log.Entries, e => e.Level == LogLevel.Information && e.Message.StartsWith("Gateway healthy again", StringComparison.Ordinal));
    }

    [Fact]
    public void A_health_check_that_throws_withholds_the_ping()
    {
        using var systemd = NotifySocket.Bind(Path.Combine(_folder, "notify"));
        using var notifier = SystemdNotifier.Create(systemd.Address, "200000", null, Pid, _log)!;

        var checks = 0;
        notifier.StartWatchdog(() =>
        {
            Interlocked.Increment(ref checks);
            throw new InvalidOperationException("heartbeat state unreadable");
        });
        Assert.True(SpinWait.SpinUntil(() => Volatile.Read(ref checks) >= 3, Bound + Bound), "the watchdog stopped checking");
        Assert.Null(systemd.Receive(TimeSpan.Zero));
        var error = Assert.Single(_log.Entries, e => e.Level == LogLevel.Error);
        Assert.IsType<InvalidOperationException>(error.Exception);
    }

    [Fact]
    public void Dispose_stops_the_watchdog()
    {
        using var systemd = NotifySocket.Bind(Path.Combine(_folder, "notify"));
        var notifier = SystemdNotifier.Create(systemd.Address, "200000", null, Pid, _log)!;
        notifier.StartWatchdog(() => true);
        Assert.Equal("WATCHDOG=1", systemd.Receive(Bound));

        notifier.Dispose();
        // A tick already past its check when Dispose ran may still send its ping.
        while (systemd.Receive(TimeSpan.FromMilliseconds(200)) is not null)
        {
        }
        Assert.Null(systemd.Receive(notifier.WatchdogInterval!.Value * 3));
        notifier.StartWatchdog(() => true);
        Assert.Null(systemd.Receive(notifier.WatchdogInterval!.Value * 3));
    }

    [Fact]
    public void Without_WATCHDOG_USEC_StartWatchdog_does_nothing()
    {
        using var systemd = NotifySocket.Bind(Path.Combine(_folder, "notify"));
        using var notifier = Create(systemd.Address);
        notifier.StartWatchdog(() => true);
        Assert.Null(systemd.Receive(TimeSpan.FromMilliseconds(300)));
    }

    private SystemdNotifier Create(string address) => SystemdNotifier.Create(address, null, null, Pid, _log)
        ?? throw new InvalidOperationException($"no notifier for {address}");

    private static long ClockMonotonicMicroseconds()
    {
        Assert.Equal(0, ClockGetTime(ClockMonotonic, out var now));
        return now.Seconds * 1_000_000 + now.Nanoseconds / 1000;
    }

    private const int ClockMonotonic = 1;

    [StructLayout(LayoutKind.Sequential)]
    private struct TimeSpec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [DllImport("libc", EntryPoint = "clock_gettime")]
    private static extern int ClockGetTime(int clock, out TimeSpec time);

    /// <summary>A fact about what only Linux has; skipped elsewhere.</summary>
    private sealed class LinuxFactAttribute : FactAttribute
    {
        public LinuxFactAttribute()
        {
            if (!OperatingSystem.IsLinux())
            {
                Skip = "Linux only";
            }
        }
    }

    /// <summary>systemd's end of the protocol: a bound Unix datagram socket.</summary>
    private sealed class NotifySocket : IDisposable
    {
        private readonly Socket _socket = new(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);

        private NotifySocket(string path)
        {
            _socket.Bind(new UnixDomainSocketEndPoint(path));
            Address = path[0] == '\0' ? "@" + path[1..] : path;
        }

        /// <summary>The socket as NOTIFY_SOCKET names it.</summary>
        public string Address { get; }

        public static NotifySocket Bind(string path) => new(path);

        /// <summary>The next datagram, or null when none arrives within <paramref name="timeout"/>.</summary>
        public string? Receive(TimeSpan timeout)
        {
            if (!_socket.Poll(timeout, SelectMode.SelectRead))
            {
                return null;
            }
            var buffer = new byte[4096];
            var length = _socket.Receive(buffer);
            return Encoding.UTF8.GetString(buffer, 0, length);
        }

        public void Dispose() => _socket.Dispose();
    }

    private sealed record Entry(LogLevel Level, string Message, Exception? Exception);

    private sealed class ListLogger : ILogger
    {
        private readonly List<Entry> _entries = [];

        public IReadOnlyList<Entry> Entries
        {
            get
            {
                lock (_entries)
                {
                    return [.. _entries];
                }
            }
        }

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            lock (_entries)
            {
                _entries.Add(new Entry(logLevel, formatter(state, exception), exception));
            }
        }
    }
}
