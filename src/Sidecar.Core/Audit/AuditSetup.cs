using System.Reflection;
using Microsoft.Extensions.Logging;
using Sidecar.Configuration;

namespace Sidecar.Audit;

/// <summary>Builds the audit pipeline a config asks for: its sinks, and where the hash chain continues.</summary>
internal static class AuditSetup
{
    /// <summary>Null when audit is off. Throws <see cref="AuditSinkException"/> when a sink can't be opened (start-up stops).</summary>
    public static AuditPipeline? Create(SidecarConfig config, ILoggerFactory loggers)
    {
        var audit = config.Audit;
        var logger = loggers.CreateLogger("Sidecar.Audit");
        if (!audit.Enabled)
        {
            logger.LogWarning("Audit is off (\"audit\": {{\"enabled\": false}}): decisions are not recorded");
            return null;
        }

        var sinks = new List<IAuditSink>();
        var head = AuditChainHead.Empty;
        if (audit.File is { } file)
        {
            var fileSink = new FileAuditSink(file, logger);
            head = fileSink.Head;
            sinks.Add(fileSink);
            if (head.RecoveredBytes > 0)
            {
                logger.LogWarning("The audit file {File} ended in an unterminated line ({Bytes} bytes, a crash mid-write): removed, noted in audit_start",
                    file.Path, head.RecoveredBytes);
            }
            if (head.UncleanStop)
            {
                logger.LogWarning("The audit trail {File} ends without audit_stop (last seq {Sequence}): the previous run did not shut down (crash, kill, out of memory?); noted in audit_start",
                    file.Path, head.Sequence);
            }
        }
        if (audit.Stdout)
        {
            sinks.Add(new StdoutAuditSink());
        }
        if (audit.Http is { } http)
        {
            sinks.Add(new HttpAuditSink(http, loggers.CreateLogger("Sidecar.Audit.Http")));
        }
        if (sinks.Count == 0)
        {
            logger.LogWarning("Audit is on but has no sink: decisions are recorded nowhere");
        }
        if (audit.Durability == AuditDurability.BeforeAnswer && audit.File is null && !audit.Stdout)
        {
            // The HTTP sink takes a batch into memory (or its spool) and sends it later: an answer released after that
            // is not yet on disk anywhere.
            logger.LogWarning("audit.durability is before_answer, but only the http sink is configured: answers wait until a batch is queued for the collector, not until it is written to disk (add \"file\")");
        }

        // A forwarded call's completion normally comes within the upstream timeout; the writer waits longer before
        // writing the call as "unknown" (its completion record was lost).
        var pendingTimeout = config.Limits.UpstreamTimeout + TimeSpan.FromMinutes(1);
        var pipeline = new AuditPipeline(audit, sinks, logger, pendingTimeout, head, Source);
        logger.LogInformation("Audit: {Sinks}, chain {Chain} continuing after seq {Sequence}",
            string.Join(", ", SinkNames(sinks, audit)), audit.HmacKey is null ? "sha256" : "hmac-sha256", head.Sequence);
        return pipeline;
    }

    private static IEnumerable<string> SinkNames(List<IAuditSink> sinks, AuditConfig config)
    {
        foreach (var sink in sinks)
        {
            yield return sink switch
            {
                FileAuditSink f => $"file {f.Path}",
                HttpAuditSink => $"http (spool {config.Http!.SpoolDirectory})",
                _ => sink.Name,
            };
        }
    }

    private static string Source { get; } = "sidecar " + (typeof(AuditSetup).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "dev");
}
