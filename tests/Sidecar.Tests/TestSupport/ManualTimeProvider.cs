namespace Sidecar.Tests.TestSupport;

/// <summary>A clock that moves only when told to: 1 tick = 1 nanosecond.</summary>
public sealed class ManualTimeProvider : TimeProvider
{
    private long _now = 1_000_000_000_000;

    public override long TimestampFrequency => 1_000_000_000;

    public override long GetTimestamp() => Volatile.Read(ref _now);

    public void Advance(TimeSpan by) => Interlocked.Add(ref _now, (long)(by.TotalSeconds * TimestampFrequency));
}
