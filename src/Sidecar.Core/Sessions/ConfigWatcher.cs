using Microsoft.Extensions.Logging;

namespace Sidecar.Sessions;

/// <summary>
/// Reloads when the config file or a policy file it names changes: watches each of their folders, and after a quiet
/// <see cref="Debounce"/> (an editor's save, or a ConfigMap update, is several events) asks the reloader once. A
/// Kubernetes ConfigMap volume updates by swapping its <c>..data</c> symlink, so events on <c>..</c>-names count
/// too. A reload whose files did not change is a no-op (<see cref="ReloadStatus.Unchanged"/>), so an unrelated
/// file in a watched folder costs one read of the watched files.
/// </summary>
internal sealed class ConfigWatcher : IDisposable
{
    public static readonly TimeSpan Debounce = TimeSpan.FromMilliseconds(300);

    private readonly ConfigReloader _reloader;
    private readonly ILogger _logger;
    private readonly Timer _timer;
    private readonly object _watchersLock = new();
    private List<FileSystemWatcher> _watchers = [];
    private HashSet<string> _names = new(StringComparer.Ordinal);
    private int _disposed;

    public ConfigWatcher(ConfigReloader reloader, ILogger logger)
    {
        _reloader = reloader;
        _logger = logger;
        _timer = new Timer(static state => ((ConfigWatcher)state!).Fire(), this, Timeout.Infinite, Timeout.Infinite);
        Watch();
    }

    /// <summary>(Re)starts the watchers for the folders of the files the live snapshot came from.</summary>
    private void Watch()
    {
        var folders = new Dictionary<string, HashSet<string>>(StringComparer.Ordinal);
        foreach (var file in _reloader.Files)
        {
            var folder = Path.GetDirectoryName(file)!;
            if (!folders.TryGetValue(folder, out var names))
            {
                folders[folder] = names = new HashSet<string>(StringComparer.Ordinal);
            }
            names.Add(Path.GetFileName(file));
        }
        var watchers = new List<FileSystemWatcher>();
        var allNames = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (folder, names) in folders)
        {
            allNames.UnionWith(names);
            try
            {
                var watcher = new FileSystemWatcher(folder)
                {
                    IncludeSubdirectories = false,
                    NotifyFilter = NotifyFilters.FileName | NotifyFilters.DirectoryName | NotifyFilters.LastWrite | NotifyFilters.Size | NotifyFilters.CreationTime,
                };
                watcher.Changed += OnEvent;
                watcher.Created += OnEvent;
                watcher.Deleted += OnEvent;
                watcher.Renamed += OnEvent;
                watcher.Error += OnError;
                watcher.EnableRaisingEvents = true;
                watchers.Add(watcher);
            }
            catch (Exception ex) when (ex is ArgumentException or IOException or PlatformNotSupportedException)
            {
                _logger.LogWarning("Cannot watch {Folder} for config changes: {Error}; SIGHUP still reloads", folder, ex.Message);
            }
        }
        List<FileSystemWatcher> old;
        lock (_watchersLock)
        {
            old = _watchers;
            _watchers = watchers;
            _names = allNames;
        }
        foreach (var watcher in old)
        {
            watcher.Dispose();
        }
    }

    private void OnEvent(object sender, FileSystemEventArgs e)
    {
        var name = e.Name ?? "";
        var oldName = (e as RenamedEventArgs)?.OldName ?? "";
        var names = Volatile.Read(ref _names);
        if (names.Contains(name) || names.Contains(oldName) || name.StartsWith("..", StringComparison.Ordinal))
        {
            _timer.Change(Debounce, Timeout.InfiniteTimeSpan);
        }
    }

    private void OnError(object sender, ErrorEventArgs e)
    {
        _logger.LogWarning("Config watcher error: {Error}; looking at the files again", e.GetException().Message);
        _timer.Change(Debounce, Timeout.InfiniteTimeSpan);
    }

    private void Fire()
    {
        if (Volatile.Read(ref _disposed) != 0)
        {
            return;
        }
        _ = ReloadAsync();
    }

    private async Task ReloadAsync()
    {
        try
        {
            var result = await _reloader.ReloadAsync(ReloadTrigger.File).ConfigureAwait(false);
            if (result.Status == ReloadStatus.Applied && Volatile.Read(ref _disposed) == 0)
            {
                Watch(); // the config may name other policy files now
            }
        }
        catch (Exception ex)
        {
            _logger.LogError(ex, "Reload after a file change failed");
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        _timer.Dispose();
        lock (_watchersLock)
        {
            foreach (var watcher in _watchers)
            {
                watcher.Dispose();
            }
            _watchers = [];
        }
    }
}
