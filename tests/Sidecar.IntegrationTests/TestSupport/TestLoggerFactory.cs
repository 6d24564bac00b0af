using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace Sidecar.IntegrationTests.TestSupport;

/// <summary>An <see cref="ILoggerFactory"/> that keeps every log entry, for assertions and failure diagnostics.</summary>
public sealed class TestLoggerFactory : ILoggerFactory
{
    private readonly ConcurrentQueue<Entry> _entries = new();

    /// <summary>One formatted log entry.</summary>
    public readonly record struct Entry(string Category, LogLevel Level, EventId EventId, string Message);

    /// <summary>Everything logged so far, in order.</summary>
    public IReadOnlyList<Entry> Entries => [.. _entries];

    /// <summary>All entries as text, one per line (for assertion messages).</summary>
    public string Dump() => string.Join('\n', _entries.Select(e => $"{e.Level} {e.Category}[{e.EventId.Id}] {e.Message}"));

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void AddProvider(ILoggerProvider provider) => throw new NotSupportedException();

    public void Dispose()
    {
    }

    private sealed class Logger(TestLoggerFactory owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            owner._entries.Enqueue(new Entry(category, logLevel, eventId, formatter(state, exception)));
    }
}
