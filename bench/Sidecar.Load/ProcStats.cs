using System.Runtime.InteropServices;

namespace Sidecar.Load;

/// <summary>CPU time and memory of target processes from /proc (Linux only).</summary>
internal static partial class ProcStats
{
    [LibraryImport("libc", EntryPoint = "sysconf")]
    private static partial long SysConf(int name);

    private static readonly double TickUs = 1_000_000.0 / Math.Max(1, SafeClockTicks());

    private static long SafeClockTicks()
    {
        try
        {
            return SysConf(2); // _SC_CLK_TCK
        }
        catch (Exception)
        {
            return 100;
        }
    }

    /// <summary>utime+stime of one process, and the same plus reaped children's time, in microseconds.</summary>
    public static (double Self, double WithReaped) Cpu(int pid)
    {
        try
        {
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            string[] f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            // After "pid (comm) ": f[0]=state ... utime=f[11], stime=f[12], cutime=f[13], cstime=f[14]
            long u = long.Parse(f[11], System.Globalization.CultureInfo.InvariantCulture);
            long s = long.Parse(f[12], System.Globalization.CultureInfo.InvariantCulture);
            long cu = long.Parse(f[13], System.Globalization.CultureInfo.InvariantCulture);
            long cs = long.Parse(f[14], System.Globalization.CultureInfo.InvariantCulture);
            return ((u + s) * TickUs, (u + s + cu + cs) * TickUs);
        }
        catch (Exception)
        {
            return (0, 0);
        }
    }

    /// <summary>The roots and all their live descendants.</summary>
    public static List<int> Tree(IReadOnlyList<int> roots)
    {
        var parent = new Dictionary<int, int>();
        foreach (string dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid))
            {
                continue;
            }
            try
            {
                string stat = File.ReadAllText(Path.Combine(dir, "stat"));
                string[] f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                parent[pid] = int.Parse(f[1], System.Globalization.CultureInfo.InvariantCulture);
            }
            catch (Exception)
            {
                // exited while we looked
            }
        }
        var result = new List<int>(roots);
        for (int i = 0; i < result.Count; i++)
        {
            foreach (var (pid, ppid) in parent)
            {
                if (ppid == result[i] && !result.Contains(pid))
                {
                    result.Add(pid);
                }
            }
        }
        return result;
    }

    /// <summary>Total CPU (self + reaped children) of the roots' process trees, in microseconds.</summary>
    public static double TreeCpu(IReadOnlyList<int> roots)
    {
        double total = 0;
        foreach (int pid in Tree(roots))
        {
            total += Cpu(pid).WithReaped;
        }
        return total;
    }

    /// <summary>A "Vm…:" field of /proc/PID/status in kB (VmHWM = peak RSS, VmRSS = current), 0 if unknown.</summary>
    public static long StatusKb(int pid, string field)
    {
        try
        {
            foreach (string line in File.ReadLines($"/proc/{pid}/status"))
            {
                if (line.StartsWith(field, StringComparison.Ordinal))
                {
                    string v = line[(field.Length + 1)..].Trim();
                    return long.Parse(v.Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
                }
            }
        }
        catch (Exception)
        {
            // gone
        }
        return 0;
    }

    public static long TreeRssKb(IReadOnlyList<int> roots)
    {
        long total = 0;
        foreach (int pid in Tree(roots))
        {
            total += StatusKb(pid, "VmRSS");
        }
        return total;
    }
}
