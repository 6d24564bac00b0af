using System.Diagnostics;
using System.Text;

namespace Sidecar.IntegrationTests.TestSupport;

/// <summary>
/// The npm-installed MCP servers the integration tests run (<c>tests/fixtures/mcp-servers</c>, pinned by its
/// <c>package-lock.json</c>). <see cref="EnsureInstalledAsync"/> runs <c>npm ci</c> there when <c>node_modules</c> is
/// missing or older than the lock file: once per test process, and under a file lock so that parallel test processes
/// (or test classes) never install at the same time.
/// </summary>
public static class McpServerFixtures
{
    private static readonly TimeSpan s_installTimeout = TimeSpan.FromMinutes(5);
    private static readonly TimeSpan s_lockTimeout = TimeSpan.FromMinutes(6);
    private static readonly Lazy<Task> s_install = new(InstallAsync, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>The fixture folder (<c>tests/fixtures/mcp-servers</c>).</summary>
    public static string Directory => Repo.PathOf("tests", "fixtures", "mcp-servers");

    /// <summary>The <c>node --require</c> preload that keeps every TCP listener on 127.0.0.1. Always use it.</summary>
    public static string LoopbackPreload => Path.Combine(Directory, "loopback.cjs");

    /// <summary>server-everything's launcher: <c>node ENTRY stdio|sse|streamableHttp</c>.</summary>
    public static string EverythingEntry =>
        Path.Combine(Directory, "node_modules", "@modelcontextprotocol", "server-everything", "dist", "index.js");

    /// <summary>Installs the fixture packages if needed (bounded; throws with npm's output if it fails).</summary>
    public static Task EnsureInstalledAsync() => s_install.Value;

    private static async Task InstallAsync()
    {
        var lockPath = Path.Combine(Directory, ".install.lock");
        await using var fileLock = await AcquireLockAsync(lockPath).ConfigureAwait(false);
        if (IsFresh())
        {
            return;
        }
        await RunNpmCiAsync().ConfigureAwait(false);
        if (!IsFresh())
        {
            throw new InvalidOperationException($"npm ci finished but {EverythingEntry} is still missing or stale");
        }
    }

    /// <summary>node_modules exists, holds server-everything and is newer than package-lock.json.</summary>
    private static bool IsFresh()
    {
        var lockFile = new FileInfo(Path.Combine(Directory, "package-lock.json"));
        // npm writes node_modules/.package-lock.json on every install: its time is the install's time.
        var installed = new FileInfo(Path.Combine(Directory, "node_modules", ".package-lock.json"));
        return lockFile.Exists && installed.Exists && File.Exists(EverythingEntry)
            && installed.LastWriteTimeUtc >= lockFile.LastWriteTimeUtc;
    }

    private static async Task<FileStream> AcquireLockAsync(string path)
    {
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                // FileShare.None is an exclusive (flock) lock on Unix: other processes get an IOException.
                return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException) when (deadline.Elapsed < s_lockTimeout)
            {
                await Task.Delay(200).ConfigureAwait(false);
            }
        }
    }

    private static async Task RunNpmCiAsync()
    {
        var start = new ProcessStartInfo("npm")
        {
            WorkingDirectory = Directory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[] { "ci", "--no-audit", "--no-fund" })
        {
            start.ArgumentList.Add(arg);
        }
        var output = new StringBuilder();
        using var process = new Process { StartInfo = start };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) { lock (output) { output.AppendLine(e.Data); } } };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) { lock (output) { output.AppendLine(e.Data); } } };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        using var timeout = new CancellationTokenSource(s_installTimeout);
        try
        {
            await process.WaitForExitAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"npm ci in {Directory} did not finish within {s_installTimeout}:\n{output}");
        }
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"npm ci in {Directory} failed with exit code {process.ExitCode}:\n{output}");
        }
    }
}
