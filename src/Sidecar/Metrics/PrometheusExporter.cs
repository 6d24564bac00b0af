using System.Buffers;
using System.Diagnostics.Metrics;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text;

namespace Sidecar.Metrics;

/// <summary>
/// <c>/metrics</c>: Prometheus text exposition 0.0.4 over a <see cref="MeterListener"/> that listens to one
/// gateway's own instruments (a filter by <see cref="Meter"/> instance: two gateways in one process never mix).
/// Chosen over OpenTelemetry's and prometheus-net's exporters by measurement (bench/RESULTS.md, "Metrics"): no
/// allocation per measurement, ~0.1 MB of RSS against +5 MB, no start-up cost, and no trimming or AOT warnings.
/// Measurements are aggregated into per-series cells, looked up lock-free by tag values (in the order the call site
/// passes them); a new series is created under a lock, at most <c>maxSeries</c> per instrument, and past that one
/// overflow series (<c>otel_metric_overflow="true"</c>) takes the rest. A series already seen allocates nothing.
/// </summary>
internal sealed class PrometheusExporter : IDisposable
{
    private readonly MeterListener _listener = new();
    private readonly Func<Instrument, bool> _filter;
    private readonly int _maxSeries;
    private readonly object _gate = new();
    private InstrumentState[] _instruments = [];

    public PrometheusExporter(Func<Instrument, bool> filter, int maxSeries = 512)
    {
        _filter = filter;
        _maxSeries = maxSeries;
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (!_filter(instrument)) return;
            var state = new InstrumentState(instrument, _maxSeries);
            lock (_gate)
            {
                // Two instruments with one Prometheus name (e.g. "sidecar.tool_calls" and "sidecar_tool_calls_total",
                // or one name in two meters) share one family: compatible ones aggregate into the same cells, others
                // are not exported (a scrape must not hold two TYPE lines or duplicate series).
                var existing = Array.Find(_instruments, s => s.PromName == state.PromName);
                if (existing is not null)
                {
                    if (!existing.CompatibleWith(state)) return;
                    state = existing;
                }
                else _instruments = [.. _instruments, state];
            }
            listener.EnableMeasurementEvents(instrument, state);
        };
        // MeasurementsCompleted (an instrument's meter disposed): its series stay, as counters must not go back.
        _listener.SetMeasurementEventCallback<long>(static (_, m, tags, state) => ((InstrumentState)state!).Record(m, tags));
        _listener.SetMeasurementEventCallback<int>(static (_, m, tags, state) => ((InstrumentState)state!).Record(m, tags));
        _listener.SetMeasurementEventCallback<double>(static (_, m, tags, state) => ((InstrumentState)state!).Record(m, tags));
        _listener.SetMeasurementEventCallback<float>(static (_, m, tags, state) => ((InstrumentState)state!).Record(m, tags));
        _listener.Start();
    }

    public const string ContentType = "text/plain; version=0.0.4; charset=utf-8";

    /// <summary>Writes every series in the text format (observable instruments are polled first).</summary>
    public void Write(IBufferWriter<byte> w)
    {
        lock (_gate)
        {
            _listener.RecordObservableInstruments();
            foreach (var s in _instruments) s.Write(w);
        }
    }

    public void Dispose() => _listener.Dispose();

    private enum Kind { Counter, UpDown, Gauge, Histogram }

    private sealed class Series
    {
        public readonly object?[] Values;
        public readonly byte[] Labels;       // `server="fs",tool="x"` (no braces), written at creation
        public long LongValue;               // counters/updown of long
        public double DoubleValue;           // counters/updown/gauges of double (and gauges of long, as double)
        public readonly long[]? Buckets;     // histogram: per-bucket (not cumulative) counts, last = +Inf
        public double Sum;
        public Series(object?[] values, byte[] labels, int buckets)
        {
            Values = values; Labels = labels;
            if (buckets > 0) Buckets = new long[buckets];
        }
    }

    private sealed class InstrumentState
    {
        private readonly Instrument _instrument;
        private readonly Kind _kind;
        private readonly bool _cumulative;    // observable counters report totals: set, not add
        private readonly bool _isLong;
        private readonly double[] _bounds = [];
        private readonly byte[] _name, _help, _type;
        private volatile string[]? _keys;     // label keys, from the first measurement
        private readonly Series?[] _series;
        private readonly int[] _table;        // open addressing: index+1 into _series, 0 = empty
        private int _count;
        private Series? _overflow;
        private readonly object _gate = new();

        public string PromName { get; }
        public bool CompatibleWith(InstrumentState o) => o._kind == _kind && o._cumulative == _cumulative && o._isLong == _isLong && o._bounds.AsSpan().SequenceEqual(_bounds);

        public InstrumentState(Instrument instrument, int maxSeries)
        {
            _instrument = instrument;
            _isLong = instrument switch
            {
                Counter<long> or UpDownCounter<long> or Histogram<long> or ObservableCounter<long> or ObservableGauge<long> or ObservableUpDownCounter<long> or Gauge<long> => true,
                Counter<int> or UpDownCounter<int> or Histogram<int> or ObservableCounter<int> or ObservableGauge<int> or ObservableUpDownCounter<int> or Gauge<int> => true,
                _ => false,
            };
            (_kind, _cumulative) = instrument switch
            {
                Counter<long> or Counter<int> or Counter<double> or Counter<float> => (Kind.Counter, false),
                ObservableCounter<long> or ObservableCounter<int> or ObservableCounter<double> or ObservableCounter<float> => (Kind.Counter, true),
                UpDownCounter<long> or UpDownCounter<int> or UpDownCounter<double> or UpDownCounter<float> => (Kind.UpDown, false),
                ObservableUpDownCounter<long> or ObservableUpDownCounter<int> or ObservableUpDownCounter<double> or ObservableUpDownCounter<float> => (Kind.UpDown, true),
                Histogram<long> or Histogram<int> or Histogram<double> or Histogram<float> => (Kind.Histogram, false),
                _ => (Kind.Gauge, true),
            };
            if (_kind == Kind.Histogram)
            {
                IReadOnlyList<double>? advice = instrument switch
                {
                    Histogram<double> h => h.Advice?.HistogramBucketBoundaries,
                    _ => null,
                };
                _bounds = advice is not null ? [.. advice] : (instrument.Unit == "s"
                    ? [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
                    : [0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000]);
            }
            var name = PrometheusExporter.PromName(instrument.Name, instrument.Unit, _kind == Kind.Counter);
            PromName = name;
            _name = Encoding.UTF8.GetBytes(name);
            _help = Encoding.UTF8.GetBytes($"# HELP {name} {EscapeHelp(instrument.Description ?? "")}\n");
            _type = Encoding.UTF8.GetBytes($"# TYPE {name} {_kind switch { Kind.Counter => "counter", Kind.Histogram => "histogram", _ => "gauge" }}\n");
            _series = new Series?[maxSeries];
            _table = new int[BitOperations_RoundUp(maxSeries * 2)];
        }

        private static int BitOperations_RoundUp(int n) => (int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)n);

        // ---- hot path ----

        public void Record(long m, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var s = Find(tags);
            switch (_kind)
            {
                case Kind.Counter or Kind.UpDown when !_cumulative: Interlocked.Add(ref s.LongValue, m); break;
                case Kind.Histogram: Observe(s, m); break;
                default: Volatile.Write(ref s.LongValue, m); break;
            }
        }

        public void Record(double m, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var s = Find(tags);
            switch (_kind)
            {
                case Kind.Counter or Kind.UpDown when !_cumulative: AddDouble(ref s.DoubleValue, m); break;
                case Kind.Histogram: Observe(s, m); break;
                default: Volatile.Write(ref s.DoubleValue, m); break;
            }
        }

        private void Observe(Series s, double m)
        {
            var b = _bounds;
            int i = 0;
            while (i < b.Length && m > b[i]) i++;      // le: upper bounds inclusive
            Interlocked.Increment(ref s.Buckets![i]);
            AddDouble(ref s.Sum, m);
        }

        private static void AddDouble(ref double target, double v)
        {
            double seen = Volatile.Read(ref target);
            while (true)
            {
                var was = Interlocked.CompareExchange(ref target, seen + v, seen);
                if (was.Equals(seen)) return;
                seen = was;
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static bool Same(object? a, object? b) =>
            ReferenceEquals(a, b) || (a is string sa ? b is string sb && string.Equals(sa, sb) : a is not null && a.Equals(b));

        private static int Hash(ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var h = new HashCode();
            foreach (var t in tags) h.Add(t.Value);   // string.GetHashCode: by content
            return h.ToHashCode();
        }

        private Series Find(ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var table = _table;
            var mask = table.Length - 1;
            var h = Hash(tags);
            for (int probe = h & mask; ; probe = (probe + 1) & mask)
            {
                var idx = Volatile.Read(ref table[probe]);
                if (idx == 0) break;
                var s = _series[idx - 1]!;
                if (Matches(s, tags)) return s;
            }
            return FindSlow(tags, h);
        }

        private bool Matches(Series s, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var v = s.Values;
            if (v.Length != tags.Length) return false;
            var keys = _keys!;
            for (int i = 0; i < v.Length; i++)
            {
                if (!ReferenceEquals(keys[i], tags[i].Key) && keys[i] != tags[i].Key) return false;
                if (!Same(v[i], tags[i].Value)) return false;
            }
            return true;
        }

        private Series FindSlow(ReadOnlySpan<KeyValuePair<string, object?>> tags, int h)
        {
            lock (_gate)
            {
                var keys = _keys;
                if (keys is null)
                {
                    keys = new string[tags.Length];
                    for (int i = 0; i < tags.Length; i++) keys[i] = tags[i].Key;
                    _keys = keys;
                }
                var mask = _table.Length - 1;
                int probe = h & mask;
                for (; ; probe = (probe + 1) & mask)
                {
                    var idx = _table[probe];
                    if (idx == 0) break;
                    if (Matches(_series[idx - 1]!, tags)) return _series[idx - 1]!;
                }
                bool keysOk = keys.Length == tags.Length;
                for (int i = 0; keysOk && i < keys.Length; i++) keysOk = keys[i] == tags[i].Key;
                if (_count == _series.Length || !keysOk)
                {
                    // Bounded: later series (and measurements with other label keys) go to one overflow series.
                    return _overflow ??= new Series([], "otel_metric_overflow=\"true\""u8.ToArray(), _kind == Kind.Histogram ? _bounds.Length + 1 : 0);
                }
                var values = new object?[tags.Length];
                var sb = new StringBuilder();
                for (int i = 0; i < tags.Length; i++)
                {
                    values[i] = tags[i].Value;
                    if (i > 0) sb.Append(',');
                    sb.Append(SanitizeLabel(tags[i].Key)).Append("=\"");
                    EscapeLabelValue(sb, Convert.ToString(tags[i].Value, CultureInfo.InvariantCulture) ?? "");
                    sb.Append('"');
                }
                var s = new Series(values, Encoding.UTF8.GetBytes(sb.ToString()), _kind == Kind.Histogram ? _bounds.Length + 1 : 0);
                _series[_count] = s;
                _count++;
                Volatile.Write(ref _table[probe], _count);   // publish after the series is complete
                return s;
            }
        }

        // ---- scrape ----

        public void Write(IBufferWriter<byte> w)
        {
            int n = Volatile.Read(ref _count);
            var overflow = _overflow;
            if (n == 0 && overflow is null) return;
            w.Write(_help);
            w.Write(_type);
            for (int i = 0; i <= n; i++)
            {
                var s = i < n ? _series[i]! : overflow;
                if (s is null) continue;
                if (_kind == Kind.Histogram) WriteHistogram(w, s);
                else
                {
                    w.Write(_name);
                    WriteLabels(w, s.Labels, default);
                    w.Write(" "u8);
                    if (_isLong) WriteNumber(w, Volatile.Read(ref s.LongValue));
                    else WriteNumber(w, Volatile.Read(ref s.DoubleValue));
                    w.Write("\n"u8);
                }
            }
        }

        private void WriteHistogram(IBufferWriter<byte> w, Series s)
        {
            long cumulative = 0;
            var b = s.Buckets!;
            for (int i = 0; i < b.Length; i++)
            {
                cumulative += Volatile.Read(ref b[i]);
                w.Write(_name); w.Write("_bucket"u8);
                WriteLabels(w, s.Labels, i < _bounds.Length ? _bounds[i] : double.PositiveInfinity);
                w.Write(" "u8); WriteNumber(w, cumulative); w.Write("\n"u8);
            }
            w.Write(_name); w.Write("_sum"u8); WriteLabels(w, s.Labels, default); w.Write(" "u8);
            WriteNumber(w, Volatile.Read(ref s.Sum)); w.Write("\n"u8);
            w.Write(_name); w.Write("_count"u8); WriteLabels(w, s.Labels, default); w.Write(" "u8);
            WriteNumber(w, cumulative); w.Write("\n"u8);
        }

        private static void WriteLabels(IBufferWriter<byte> w, byte[] labels, double? le)
        {
            if (labels.Length == 0 && le is null) return;
            w.Write("{"u8);
            w.Write(labels);
            if (le is { } l)
            {
                if (labels.Length > 0) w.Write(","u8);
                w.Write("le=\""u8); WriteNumber(w, l); w.Write("\""u8);
            }
            w.Write("}"u8);
        }
    }

    private static void WriteNumber(IBufferWriter<byte> w, long v)
    {
        var span = w.GetSpan(24);
        v.TryFormat(span, out var n, default, CultureInfo.InvariantCulture);
        w.Advance(n);
    }

    private static void WriteNumber(IBufferWriter<byte> w, double v)
    {
        if (double.IsPositiveInfinity(v)) { w.Write("+Inf"u8); return; }
        if (double.IsNegativeInfinity(v)) { w.Write("-Inf"u8); return; }
        if (double.IsNaN(v)) { w.Write("NaN"u8); return; }
        var span = w.GetSpan(32);
        v.TryFormat(span, out var n, "R", CultureInfo.InvariantCulture);
        w.Advance(n);
    }

    /// <summary>OpenTelemetry-compatible naming: dots to underscores, unit suffix, _total on counters.</summary>
    public static string PromName(string name, string? unit, bool counter)
    {
        var sb = new StringBuilder(name.Length + 16);
        for (int i = 0; i < name.Length; i++)
        {
            var c = name[i];
            bool ok = c is (>= 'a' and <= 'z') or (>= 'A' and <= 'Z') or '_' or ':' || (c is >= '0' and <= '9' && i > 0);
            sb.Append(ok ? c : '_');
        }
        var s = sb.ToString();
        var suffix = unit switch
        {
            "s" => "seconds", "ms" => "milliseconds", "us" => "microseconds", "By" => "bytes", "1" => "ratio",
            _ => null,   // "{call}" etc.: annotations, no suffix
        };
        if (suffix is not null && !s.EndsWith("_" + suffix, StringComparison.Ordinal)) s += "_" + suffix;
        if (counter && !s.EndsWith("_total", StringComparison.Ordinal)) s += "_total";
        return s;
    }

    private static string SanitizeLabel(string key)
    {
        var sb = new StringBuilder(key.Length);
        for (int i = 0; i < key.Length; i++)
        {
            var c = key[i];
            bool ok = c is (>= 'a' and <= 'z') or (>= 'A' and <= 'Z') or '_' || (c is >= '0' and <= '9' && i > 0);
            sb.Append(ok ? c : '_');
        }
        return sb.ToString();
    }

    private static void EscapeLabelValue(StringBuilder sb, string v)
    {
        foreach (var c in v)
        {
            if (c == '\\') sb.Append("\\\\");
            else if (c == '"') sb.Append("\\\"");
            else if (c == '\n') sb.Append("\\n");
            else sb.Append(c);
        }
    }

    private static string EscapeHelp(string v) => v.Replace("\\", "\\\\").Replace("\n", "\\n");
}
