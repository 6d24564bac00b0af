using System.Diagnostics;
using System.Globalization;
using Microsoft.Extensions.Logging.Abstractions;
using Sidecar.Configuration;
using Sidecar.Hosting;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Hosting;

/// <summary>
/// deploy/systemd/sidecar.service: <c>Type=notify</c> as <see cref="SystemdNotifier"/> speaks it, reload by SIGHUP,
/// the watchdog, and the sandbox; and, where systemd-analyze is installed, that systemd accepts the unit and rates
/// its exposure low.
/// </summary>
public sealed class SystemdUnitTests
{
    private const string SystemdAnalyze = "/usr/bin/systemd-analyze";

    /// <summary>limits.shutdownGrace's default: the drain before audit is flushed, which TimeoutStopSec must outlast.</summary>
    private static readonly TimeSpan DefaultShutdownGrace = TimeSpan.FromSeconds(10);

    private static readonly Lazy<Unit> s_unit = new(() => Unit.Parse(File.ReadAllLines(UnitPath)));

    private static string UnitPath => Repo.PathOf("deploy", "systemd", "sidecar.service");

    [Fact]
    public void It_is_Type_notify_with_reload_by_SIGHUP()
    {
        var unit = s_unit.Value;
        Assert.Equal("notify", unit.Single("Service", "Type"));
        Assert.Equal("main", unit.Single("Service", "NotifyAccess"));
        Assert.Equal("/usr/local/bin/sidecar run --config /etc/sidecar/sidecar.json", unit.Single("Service", "ExecStart"));
        Assert.Equal("/bin/kill -HUP $MAINPID", unit.Single("Service", "ExecReload"));
        Assert.Equal("on-failure", unit.Single("Service", "Restart"));
        Assert.Equal("mixed", unit.Single("Service", "KillMode"));
        Assert.Equal("-/etc/sidecar/env", unit.Single("Service", "EnvironmentFile"));
        Assert.Equal("multi-user.target", unit.Single("Install", "WantedBy"));
    }

    [Fact]
    public void The_watchdog_is_on_and_Sidecar_pings_at_half_of_it()
    {
        var unit = s_unit.Value;
        var watchdog = Seconds(unit.Single("Service", "WatchdogSec"));
        Assert.Equal(TimeSpan.FromSeconds(30), watchdog);
        // What systemd puts in WATCHDOG_USEC for it, and what the notifier makes of that.
        var usec = ((long)watchdog.TotalMicroseconds).ToString(CultureInfo.InvariantCulture);
        using var notifier = SystemdNotifier.Create("/run/systemd/notify", usec, null, Environment.ProcessId, NullLogger.Instance)!;
        Assert.Equal(TimeSpan.FromSeconds(15), notifier.WatchdogInterval);
    }

    [Fact]
    public void The_stop_timeout_outlasts_the_drain()
    {
        var stop = Seconds(s_unit.Value.Single("Service", "TimeoutStopSec"));
        Assert.True(stop >= DefaultShutdownGrace + TimeSpan.FromSeconds(10), $"TimeoutStopSec={stop} leaves the audit flush no time after a {DefaultShutdownGrace} drain");
    }

    [Theory]
    [InlineData("DynamicUser", "yes")]
    [InlineData("StateDirectory", "sidecar")]
    [InlineData("WorkingDirectory", "/var/lib/sidecar")]
    [InlineData("ReadWritePaths", "/var/lib/sidecar")]
    [InlineData("UMask", "0077")]
    [InlineData("NoNewPrivileges", "yes")]
    [InlineData("ProtectSystem", "strict")]
    [InlineData("ProtectHome", "yes")]
    [InlineData("PrivateTmp", "yes")]
    [InlineData("PrivateDevices", "yes")]
    [InlineData("PrivateUsers", "yes")]
    [InlineData("PrivateMounts", "yes")]
    [InlineData("ProtectProc", "invisible")]
    [InlineData("ProtectKernelTunables", "yes")]
    [InlineData("ProtectKernelModules", "yes")]
    [InlineData("ProtectKernelLogs", "yes")]
    [InlineData("ProtectControlGroups", "yes")]
    [InlineData("ProtectClock", "yes")]
    [InlineData("ProtectHostname", "yes")]
    [InlineData("RestrictNamespaces", "yes")]
    [InlineData("RestrictRealtime", "yes")]
    [InlineData("RestrictSUIDSGID", "yes")]
    [InlineData("LockPersonality", "yes")]
    [InlineData("MemoryDenyWriteExecute", "yes")]
    [InlineData("SystemCallArchitectures", "native")]
    [InlineData("SystemCallErrorNumber", "EPERM")]
    [InlineData("CapabilityBoundingSet", "")]
    [InlineData("AmbientCapabilities", "")]
    public void The_sandbox_is_set(string key, string value) => Assert.Equal(value, s_unit.Value.Single("Service", key));

    [Fact]
    public void Sockets_are_restricted_to_the_network_and_the_notify_socket()
    {
        var unit = s_unit.Value;
        var families = unit.Single("Service", "RestrictAddressFamilies").Split(' ', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(["AF_INET", "AF_INET6", "AF_UNIX"], families.Order(StringComparer.Ordinal));
        var filters = unit.All("Service", "SystemCallFilter");
        Assert.Equal("@system-service", filters[0]);
        Assert.All(filters.Skip(1), filter => Assert.StartsWith("~", filter, StringComparison.Ordinal));
    }

    [Fact]
    public void The_default_audit_file_is_in_a_writable_folder()
    {
        // AuditConfig.DefaultFilePath is relative to the working directory, the one folder the unit makes writable.
        var unit = s_unit.Value;
        var audit = Path.Combine(unit.Single("Service", "WorkingDirectory"), AuditConfig.DefaultFilePath);
        var writable = unit.All("Service", "ReadWritePaths").SelectMany(v => v.Split(' ', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains(writable, folder => audit.StartsWith(folder.TrimStart('-') + "/", StringComparison.Ordinal));
    }

    [SystemdAnalyzeFact]
    public async Task Systemd_accepts_the_unit_and_rates_its_exposure_low()
    {
        // A copy whose ExecStart names a program that exists (verify checks that it does), same name, other folder.
        var folder = Directory.CreateTempSubdirectory("sidecar-unit-").FullName;
        try
        {
            var copy = Path.Combine(folder, "sidecar.service");
            await File.WriteAllLinesAsync(copy, File.ReadAllLines(UnitPath)
                .Select(line => line.StartsWith("ExecStart=/usr/local/bin/sidecar ", StringComparison.Ordinal) ? "ExecStart=/bin/true" + line["ExecStart=/usr/local/bin/sidecar".Length..] : line));

            var (verify, verifyOutput) = await RunAsync("verify", copy);
            Assert.True(verify == 0, $"systemd-analyze verify exited {verify}: {verifyOutput}");
            // verify exits 0 for a key it does not know or a value it cannot parse ("…, ignoring"): it must say nothing of the unit.
            Assert.DoesNotContain(verifyOutput.Split('\n'), line => line.Contains("sidecar.service", StringComparison.Ordinal));
            // Exposure 0.0-10.0; --threshold takes it times ten. The unit scores 1.1 (README); above 2.0 is a regression.
            var (security, securityOutput) = await RunAsync("security", "--offline=true", "--threshold=20", copy);
            Assert.True(security == 0, $"systemd-analyze security exited {security}: {securityOutput}");
            Assert.Contains("Overall exposure level for sidecar.service", securityOutput, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static async Task<(int ExitCode, string Output)> RunAsync(params string[] arguments)
    {
        var start = new ProcessStartInfo(SystemdAnalyze) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        // No pager, no colours, no attempt to reach a running systemd.
        start.Environment["SYSTEMD_PAGER"] = "";
        start.Environment["SYSTEMD_COLORS"] = "0";
        using var process = Process.Start(start)!;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var stdout = process.StandardOutput.ReadToEndAsync(timeout.Token);
        var stderr = process.StandardError.ReadToEndAsync(timeout.Token);
        await process.WaitForExitAsync(timeout.Token);
        return (process.ExitCode, await stdout + await stderr);
    }

    private static TimeSpan Seconds(string value)
        => TimeSpan.FromSeconds(int.Parse(value.EndsWith('s') ? value[..^1] : value, NumberStyles.None, CultureInfo.InvariantCulture));

    /// <summary>A unit file's assignments by section, in order (a key may repeat); comments and blank lines skipped.</summary>
    private sealed class Unit
    {
        private readonly List<(string Section, string Key, string Value)> _assignments = [];

        public static Unit Parse(string[] lines)
        {
            var unit = new Unit();
            var section = "";
            foreach (var raw in lines)
            {
                var line = raw.Trim();
                if (line.Length == 0 || line[0] is '#' or ';')
                {
                    continue;
                }
                if (line[0] == '[')
                {
                    Assert.EndsWith("]", line, StringComparison.Ordinal);
                    section = line[1..^1];
                    continue;
                }
                Assert.False(line.EndsWith('\\'), $"continued lines are not parsed here: {line}");
                var equals = line.IndexOf('=', StringComparison.Ordinal);
                Assert.True(equals > 0, $"not an assignment: {line}");
                unit._assignments.Add((section, line[..equals].Trim(), line[(equals + 1)..].Trim()));
            }
            return unit;
        }

        public List<string> All(string section, string key)
            => [.. _assignments.Where(a => a.Section == section && a.Key == key).Select(a => a.Value)];

        /// <summary>The key's one assignment (a second one would add to or reset the first: not what this unit means).</summary>
        public string Single(string section, string key)
        {
            var values = All(section, key);
            Assert.True(values.Count == 1, $"[{section}] {key}= is assigned {values.Count} times");
            return values[0];
        }
    }

    /// <summary>A fact that needs systemd-analyze; skipped (reported so) where it is not installed.</summary>
    private sealed class SystemdAnalyzeFactAttribute : FactAttribute
    {
        public SystemdAnalyzeFactAttribute()
        {
            if (!File.Exists(SystemdAnalyze))
            {
                Skip = SystemdAnalyze + " is not installed";
            }
        }
    }
}
