namespace Sidecar.Load;

/// <summary>
/// Log-linear latency histogram over nanoseconds: values below 128 ns are exact, above that every power of two is
/// split into 64 linear sub-buckets (at most 1.6 % relative error). Recording is one Interlocked.Increment, no
/// allocation. Values above ~2^40 ns (18 minutes) land in the last bucket.
/// </summary>
internal sealed class Histogram
{
    private const int SubBits = 6;
    private const int Sub = 1 << SubBits;           // 64 sub-buckets per power of two
    private const int Linear = 2 * Sub;             // values < 128 are stored exactly
    private const int MaxExponent = 40;
    private readonly long[] _counts = new long[Linear + ((MaxExponent - SubBits) * Sub)];
    private long _max;
    private long _count;

    public long Count => Interlocked.Read(ref _count);
    public long MaxNs => Interlocked.Read(ref _max);

    public void Record(long ns)
    {
        if (ns < 0)
        {
            ns = 0;
        }
        Interlocked.Increment(ref _counts[Index(ns)]);
        Interlocked.Increment(ref _count);
        long seen = Interlocked.Read(ref _max);
        while (ns > seen)
        {
            long prev = Interlocked.CompareExchange(ref _max, ns, seen);
            if (prev == seen)
            {
                break;
            }
            seen = prev;
        }
    }

    private static int Index(long v)
    {
        if (v < Linear)
        {
            return (int)v;
        }
        int e = 63 - System.Numerics.BitOperations.LeadingZeroCount((ulong)v); // >= 7
        if (e > MaxExponent)
        {
            return Linear + ((MaxExponent - SubBits - 1) * Sub) + (Sub - 1);
        }
        int sub = (int)((v >> (e - SubBits)) & (Sub - 1));
        return Linear + ((e - SubBits - 1) * Sub) + sub;
    }

    /// <summary>Midpoint of the bucket at an index, in nanoseconds.</summary>
    private static double Value(int index)
    {
        if (index < Linear)
        {
            return index;
        }
        int rel = index - Linear;
        int e = (rel / Sub) + SubBits + 1;
        int sub = rel % Sub;
        long width = 1L << (e - SubBits);
        long low = (1L << e) + (sub * width);
        return low + (width / 2.0);
    }

    /// <summary>The value at quantile q (0..1) in nanoseconds, never above the recorded maximum.</summary>
    public double Quantile(double q)
    {
        long total = Count;
        if (total == 0)
        {
            return double.NaN;
        }
        long rank = Math.Max(1, (long)Math.Ceiling(q * total));
        long seen = 0;
        for (int i = 0; i < _counts.Length; i++)
        {
            seen += Interlocked.Read(ref _counts[i]);
            if (seen >= rank)
            {
                return Math.Min(Value(i), MaxNs);
            }
        }
        return MaxNs;
    }
}
