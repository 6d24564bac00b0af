using System.Diagnostics;
using System.Globalization;

namespace Sidecar.Upstreams;

/// <summary>
/// A snapshot of a process's descendants (Linux <c>/proc</c>), so that children an upstream leaves behind when its
/// root process exits (and they are re-parented away from it) can still be found and killed.
/// <see cref="Process.Kill(bool)"/> alone only finds descendants while their parents are alive.
/// </summary>
internal static class ProcessTree
{
    /// <summary>One process: its id and its start time (clock ticks since boot), which tells a reused id apart.</summary>
    public readonly record struct Member(int Pid, long StartTime);

    /// <summary>Descendants of <paramref name="rootPid"/> (not the root itself); empty where /proc is unavailable.</summary>
    public static List<Member> Descendants(int rootPid)
    {
        var result = new List<Member>();
        if (!OperatingSystem.IsLinux())
        {
            return result;
        }
        var children = new Dictionary<int, List<Member>>();
        try
        {
            foreach (var dir in Directory.EnumerateDirectories("/proc"))
            {
                var name = Path.GetFileName(dir.AsSpan());
                if (!int.TryParse(name, NumberStyles.None, CultureInfo.InvariantCulture, out var pid))
                {
                    continue;
                }
                if (ReadStat(pid) is not { } stat)
                {
                    continue;
                }
                if (!children.TryGetValue(stat.ParentPid, out var list))
                {
                    children[stat.ParentPid] = list = [];
                }
                list.Add(new Member(pid, stat.StartTime));
            }
        }
        catch (IOException)
        {
            return result;
        }
        catch (UnauthorizedAccessException)
        {
            return result;
        }

        var queue = new Queue<int>();
        queue.Enqueue(rootPid);
        while (queue.Count > 0 && result.Count < 10_000)
        {
            if (children.TryGetValue(queue.Dequeue(), out var list))
            {
                foreach (var child in list)
                {
                    result.Add(child);
                    queue.Enqueue(child.Pid);
                }
            }
        }
        return result;
    }

    /// <summary>True while the process still exists, is the same process (start time) and is not a zombie.</summary>
    public static bool IsAlive(Member member) =>
        ReadStat(member.Pid) is { } stat && stat.StartTime == member.StartTime && stat.State != 'Z' && stat.State != 'X';

    /// <summary>Kills each member that is still the process the snapshot saw. Returns how many were signalled.</summary>
    public static int KillSurvivors(List<Member> members)
    {
        var killed = 0;
        foreach (var member in members)
        {
            if (!IsAlive(member))
            {
                continue;
            }
            try
            {
                using var process = Process.GetProcessById(member.Pid);
                process.Kill();
                killed++;
            }
            catch (ArgumentException)
            {
                // Already gone.
            }
            catch (InvalidOperationException)
            {
                // Exited meanwhile.
            }
            catch (System.ComponentModel.Win32Exception)
            {
                // Not ours to kill (permissions), or gone.
            }
        }
        return killed;
    }

    /// <summary>Kills the survivors, then waits (at most <paramref name="timeout"/>) until none is alive any more.</summary>
    public static async Task KillSurvivorsAsync(List<Member> members, TimeSpan timeout)
    {
        if (KillSurvivors(members) == 0)
        {
            return;
        }
        var deadline = DateTime.UtcNow + timeout;
        while (members.Exists(IsAlive) && DateTime.UtcNow < deadline)
        {
            await Task.Delay(20).ConfigureAwait(false);
        }
    }

    private readonly record struct Stat(char State, int ParentPid, long StartTime);

    private static Stat? ReadStat(int pid)
    {
        string text;
        try
        {
            text = File.ReadAllText($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/stat");
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
        // "pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime
        //  priority nice num_threads itrealvalue starttime ..." — comm may hold spaces and parentheses: parse after the last ')'.
        var close = text.LastIndexOf(')');
        if (close < 0 || close + 2 >= text.Length)
        {
            return null;
        }
        var fields = text.AsSpan(close + 2);
        Span<Range> parts = stackalloc Range[21];
        var count = fields.Split(parts, ' ');
        if (count < 20)
        {
            return null;
        }
        // After the comm: [0] state, [1] ppid, ... [19] starttime.
        var state = fields[parts[0]];
        if (state.Length != 1
            || !int.TryParse(fields[parts[1]], NumberStyles.None, CultureInfo.InvariantCulture, out var ppid)
            || !long.TryParse(fields[parts[19]], NumberStyles.None, CultureInfo.InvariantCulture, out var start))
        {
            return null;
        }
        return new Stat(state[0], ppid, start);
    }
}
