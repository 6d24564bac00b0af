using Sidecar.Policy;

namespace Sidecar.Configuration;

/// <summary>Reads <c>admin</c> and <c>approvals</c> of <c>sidecar.json</c>, every error with path and line.</summary>
internal static class ApprovalsConfigReader
{
    /// <summary><c>admin</c>: <c>listen</c> (default 127.0.0.1:8788, not the agent listener's) and <c>token</c> (required, <c>${NAME}</c> expanded).</summary>
    public static AdminConfig? ReadAdmin(ConfigNode node, string agentListen, Func<string, string?> environment, DiagnosticBag diagnostics)
    {
        if (node is not ConfigObject obj)
        {
            diagnostics.Add(node, $"\"admin\" must be an object with \"listen\" and \"token\", not {node.KindName}");
            return null;
        }
        var errorsBefore = diagnostics.Items.Count;
        var members = new PolicyConfigReader.MemberReader(obj, diagnostics);
        var listen = AdminConfig.DefaultListen;
        if (members.Take("listen") is { } listenNode && PolicyConfigReader.ReadString(listenNode, diagnostics) is { } l)
        {
            if (!SidecarConfigReader.TryParseListen(l, out _, out _))
            {
                diagnostics.Add(listenNode, $"invalid admin listen address \"{l}\"; expected HOST:PORT, e.g. \"127.0.0.1:8788\"");
            }
            else if (SameAddress(l, agentListen))
            {
                diagnostics.Add(listenNode, $"\"admin.listen\" is the agent listener's address ({agentListen}): the admin API needs a listener of its own");
            }
            else
            {
                listen = l;
            }
        }
        else if (SameAddress(listen, agentListen))
        {
            diagnostics.Add(obj, $"the admin API's default address {AdminConfig.DefaultListen} is the agent listener's: set \"admin.listen\"");
        }
        string? token = null;
        if (members.Take("token") is not { } tokenNode)
        {
            diagnostics.Add(obj, "\"admin\" needs a \"token\" (e.g. \"${SIDECAR_ADMIN_TOKEN}\"): every admin request must carry it");
        }
        else if (PolicyConfigReader.ReadString(tokenNode, diagnostics) is { } t && SidecarConfigReader.Expand(t, tokenNode, environment, diagnostics) is { } expanded)
        {
            if (System.Text.Encoding.UTF8.GetByteCount(expanded) < AdminConfig.MinTokenBytes)
            {
                diagnostics.Add(tokenNode, $"\"admin.token\" must be at least {AdminConfig.MinTokenBytes} bytes (a shorter token is guessable; e.g. `openssl rand -hex 32`)");
            }
            else
            {
                token = expanded;
            }
        }
        members.ReportUnknown("listen, token");
        return diagnostics.Items.Count > errorsBefore || token is null ? null : new AdminConfig(listen, token, obj.Location);
    }

    /// <summary><c>approvals</c>: <c>hold</c> (default 30 s), <c>maxPending</c> (default 1000) and <c>webhook</c>.</summary>
    public static ApprovalsConfig ReadApprovals(ConfigNode node, Func<string, string?> environment, DiagnosticBag diagnostics)
    {
        if (node is not ConfigObject obj)
        {
            diagnostics.Add(node, $"\"approvals\" must be an object with \"hold\" and \"webhook\", not {node.KindName}");
            return ApprovalsConfig.Default;
        }
        var members = new PolicyConfigReader.MemberReader(obj, diagnostics);
        var hold = ApprovalsConfig.DefaultHold;
        if (members.Take("hold") is { } holdNode)
        {
            if (SidecarConfigReader.TryReadDurationFromZero(holdNode, TimeSpan.FromMinutes(10), out var h))
            {
                hold = h;
            }
            else
            {
                diagnostics.Add(holdNode, $"invalid hold {PolicyConfigReader.Describe(holdNode)}; expected a duration from \"0s\" (answer at once) to \"10m\", e.g. \"30s\"");
            }
        }
        var maxPending = ApprovalsConfig.DefaultMaxPending;
        if (members.Take("maxPending") is { } maxNode)
        {
            if (maxNode is ConfigScalar { Kind: ConfigNodeKind.Number, Text: { } text } && int.TryParse(text, out var m) && m is >= 1 and <= 1_000_000)
            {
                maxPending = m;
            }
            else
            {
                diagnostics.Add(maxNode, $"invalid maxPending {PolicyConfigReader.Describe(maxNode)}; expected a whole number from 1 to 1000000");
            }
        }
        var webhook = members.Take("webhook") is { } webhookNode ? ReadWebhook(webhookNode, environment, diagnostics) : null;
        members.ReportUnknown("hold, maxPending, webhook");
        return new ApprovalsConfig(hold, maxPending, webhook);
    }

    private static ApprovalWebhookConfig? ReadWebhook(ConfigNode node, Func<string, string?> environment, DiagnosticBag diagnostics)
    {
        if (node is not ConfigObject obj)
        {
            diagnostics.Add(node, $"\"webhook\" must be an object with \"url\", not {node.KindName}");
            return null;
        }
        var members = new PolicyConfigReader.MemberReader(obj, diagnostics);
        var (url, headers, timeout) = SidecarConfigReader.ReadHttpTarget(members, obj, "webhook", TimeSpan.FromSeconds(5), TimeSpan.FromMinutes(1), "1m",
            environment, diagnostics);
        string? hmacKey = null;
        if (members.Take("hmacKey") is { } keyNode && PolicyConfigReader.ReadString(keyNode, diagnostics) is { } k
            && SidecarConfigReader.Expand(k, keyNode, environment, diagnostics) is { } key)
        {
            if (System.Text.Encoding.UTF8.GetByteCount(key) < 16)
            {
                diagnostics.Add(keyNode, "\"hmacKey\" must be at least 16 bytes (a shorter key is guessable)");
            }
            else
            {
                hmacKey = key;
            }
        }
        members.ReportUnknown("url, headers, hmacKey, timeout");
        return url is null ? null : new ApprovalWebhookConfig(url, headers, hmacKey, timeout);
    }

    /// <summary>Whether two HOST:PORT addresses name the same socket (localhost is 127.0.0.1).</summary>
    internal static bool SameAddress(string a, string b)
        => SidecarConfigReader.TryParseListen(a, out var hostA, out var portA) && SidecarConfigReader.TryParseListen(b, out var hostB, out var portB)
           && portA == portB && portA != 0 && Normalize(hostA) == Normalize(hostB);

    private static string Normalize(string host) => host == "localhost" ? "127.0.0.1" : System.Net.IPAddress.Parse(host).ToString();
}
