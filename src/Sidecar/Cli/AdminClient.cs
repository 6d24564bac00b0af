using System.CommandLine;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Sidecar.Configuration;

namespace Sidecar.Cli;

/// <summary>
/// The options every admin verb takes: where the admin API listens (<c>--admin</c>, else <c>admin.listen</c> of
/// <c>--config</c>) and which token to send (<c>--token-env</c>, else <c>admin.token</c> of the config, else
/// <c>$SIDECAR_ADMIN_TOKEN</c>). Made once per command: each command owns its option instances.
/// </summary>
internal sealed class AdminOptions
{
    public Option<string?> Admin { get; } = new("--admin")
    {
        Description = "The admin API's URL, e.g. http://127.0.0.1:8788 (default: http://{admin.listen} of --config)",
        HelpName = "URL",
    };

    public Option<string?> TokenEnv { get; } = new("--token-env")
    {
        Description = $"Name of the environment variable holding the admin token (default: admin.token of --config, else {AdminClient.DefaultTokenVariable})",
        HelpName = "NAME",
    };

    public Option<string?> Config { get; } = new("--config", "-c")
    {
        Description = $"A sidecar.json whose \"admin\" section gives the URL and the token (default: ${AdminClient.ConfigVariable})",
        HelpName = "FILE",
    };

    public void AddTo(Command command)
    {
        command.Options.Add(Admin);
        command.Options.Add(TokenEnv);
        command.Options.Add(Config);
    }
}

/// <summary>One answer of the admin API: its status and its whole body.</summary>
internal readonly record struct AdminResponse(HttpStatusCode Status, string? ReasonPhrase, byte[] Body)
{
    public bool IsSuccess => (int)Status is >= 200 and < 300;
}

/// <summary>
/// Talks to the gateway's admin API for the CLI verbs (<c>approvals</c>, <c>reload</c>): resolves the URL and the
/// token, sends one request with <c>Authorization: Bearer</c>, and turns every failure into one line on stderr.
/// Exit codes: <see cref="Ok"/>, <see cref="Refused"/> (the API said no, or could not be reached),
/// <see cref="Usage"/>. The token is never printed.
/// </summary>
internal sealed class AdminClient : IDisposable
{
    public const int Ok = 0;
    public const int Refused = 1;
    public const int Usage = 2;

    public const string DefaultTokenVariable = "SIDECAR_ADMIN_TOKEN";
    public const string ConfigVariable = "SIDECAR_CONFIG";

    /// <summary>The whole exchange, connect included: an admin call is one small request to a local listener.</summary>
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    /// <summary>An answer larger than this is not an admin API's (a full pending list is well under 1 MB per 1000).</summary>
    private const int MaxResponseBytes = 16 * 1024 * 1024;

    private readonly HttpClient _http;
    private readonly string _token;

    private AdminClient(Uri baseUri, string token)
    {
        BaseUri = baseUri;
        _token = token;
        // No redirects: a redirect would carry the token to wherever it points. No proxy: the admin API is a local
        // listener, and a proxy from the environment would see the bearer token.
        _http = new HttpClient(new SocketsHttpHandler { AllowAutoRedirect = false, UseProxy = false, ConnectTimeout = Timeout })
        {
            Timeout = Timeout,
            MaxResponseContentBufferSize = MaxResponseBytes,
        };
    }

    /// <summary>The admin API's base URL, ending in <c>/</c>.</summary>
    public Uri BaseUri { get; }

    /// <summary>The URL as printed in messages: without the trailing <c>/</c>.</summary>
    public string Display => BaseUri.AbsoluteUri.TrimEnd('/');

    /// <summary>The client for the command's options, or null after one line on <paramref name="error"/> (exit <see cref="Usage"/>).</summary>
    public static AdminClient? Connect(ParseResult parse, AdminOptions options, TextWriter error)
        => TryResolve(parse.GetValue(options.Admin), parse.GetValue(options.TokenEnv), parse.GetValue(options.Config),
            Environment.GetEnvironmentVariable, error, out var baseUri, out var token)
            ? new AdminClient(baseUri, token)
            : null;

    /// <summary>
    /// Where to connect and with which token. The URL: <paramref name="admin"/>, else the config's
    /// <c>admin.listen</c>. The token: the variable <paramref name="tokenEnv"/> names, else the config's
    /// <c>admin.token</c>, else <c>$SIDECAR_ADMIN_TOKEN</c>. The config is <paramref name="configPath"/>, else
    /// <c>$SIDECAR_CONFIG</c>, and is read only when one of them is still missing.
    /// </summary>
    internal static bool TryResolve(string? admin, string? tokenEnv, string? configPath, Func<string, string?> environment,
        TextWriter error, out Uri baseUri, out string token)
    {
        baseUri = null!;
        token = null!;
        Uri? url = null;
        if (admin is not null && !TryParseUrl(admin, out url))
        {
            error.WriteLine(Messages.BadUrl(admin));
            return false;
        }
        string? secret = null;
        if (tokenEnv is not null && (secret = environment(tokenEnv)) is not { Length: > 0 })
        {
            error.WriteLine(Messages.TokenVariableNotSet(tokenEnv));
            return false;
        }
        configPath ??= url is null || secret is null ? environment(ConfigVariable) : null;
        if ((url is null || secret is null) && configPath is not null)
        {
            if (!TryReadConfig(configPath, needToken: secret is null, environment, error, out var listen, out var configToken))
            {
                return false;
            }
            if (url is null && !TryListenUrl(listen, out url))
            {
                error.WriteLine(Messages.ListenNotConnectable(configPath, listen));
                return false;
            }
            secret ??= configToken;
        }
        if (url is null)
        {
            error.WriteLine(Messages.NoUrl);
            return false;
        }
        if (secret is null && (secret = environment(DefaultTokenVariable)) is not { Length: > 0 })
        {
            error.WriteLine(Messages.NoToken);
            return false;
        }
        foreach (var c in secret)
        {
            // Anything else cannot go into a header as is (and a line break would end it).
            if (c is < '!' or > '~')
            {
                error.WriteLine(Messages.TokenNotPrintable);
                return false;
            }
        }
        baseUri = url;
        token = secret;
        return true;
    }

    /// <summary>An absolute http(s) URL without query or fragment, made to end in <c>/</c> so paths resolve below it.</summary>
    internal static bool TryParseUrl(string text, out Uri url)
    {
        url = null!;
        if (!Uri.TryCreate(text, UriKind.Absolute, out var parsed)
            || (parsed.Scheme != Uri.UriSchemeHttp && parsed.Scheme != Uri.UriSchemeHttps)
            || parsed.Query.Length > 0 || parsed.Fragment.Length > 0 || parsed.UserInfo.Length > 0)
        {
            return false;
        }
        url = new Uri(parsed.GetLeftPart(UriPartial.Path).TrimEnd('/') + "/");
        return true;
    }

    /// <summary>
    /// The URL to reach a listener at <paramref name="listen"/> (HOST:PORT) from this host: a wildcard address is
    /// reached on its loopback (0.0.0.0 on 127.0.0.1, :: on ::1), an IPv6 address is bracketed. Port 0 means "any
    /// free port, chosen at start-up": no URL.
    /// </summary>
    internal static bool TryListenUrl(string listen, out Uri url)
    {
        url = null!;
        if (!SidecarConfigReader.TryParseListen(listen, out var host, out var port) || port == 0)
        {
            return false;
        }
        if (IPAddress.TryParse(host, out var address))
        {
            if (address.Equals(IPAddress.Any))
            {
                address = IPAddress.Loopback;
            }
            else if (address.Equals(IPAddress.IPv6Any))
            {
                address = IPAddress.IPv6Loopback;
            }
            host = address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{address}]" : address.ToString();
        }
        url = new Uri($"http://{host}:{port}/");
        return true;
    }

    /// <summary>
    /// Reads only <c>admin</c> (and <c>listen</c>, which it must differ from) of a sidecar.json, with the gateway's
    /// own reader and its messages. Not the whole file: the rest may name variables (upstream keys, HMAC keys) that
    /// only the gateway's environment holds. When the token comes from elsewhere, an unset variable in
    /// <c>admin.token</c> is no error here.
    /// </summary>
    private static bool TryReadConfig(string path, bool needToken, Func<string, string?> environment, TextWriter error,
        out string listen, out string? token)
    {
        listen = "";
        token = null;
        var diagnostics = new DiagnosticBag(path);
        var root = diagnostics.ReadFile(path, "config") is { } bytes ? ConfigJsonParser.Parse(bytes, diagnostics) : null;
        if (root is not null and not ConfigObject)
        {
            diagnostics.Add(root, $"the config must be a JSON object, not {root.KindName}");
        }
        if (root is ConfigObject obj && !diagnostics.HasErrors)
        {
            if (obj["admin"] is not { } adminNode)
            {
                error.WriteLine(Messages.NoAdminSection(path));
                return false;
            }
            var agentListen = obj["listen"] is ConfigScalar { IsString: true, Text: { } l } && SidecarConfigReader.TryParseListen(l, out _, out _)
                ? l
                : SidecarConfig.DefaultListen;
            var stand = new string('x', AdminConfig.MinTokenBytes);
            var admin = ApprovalsConfigReader.ReadAdmin(adminNode, agentListen,
                needToken ? environment : name => environment(name) is { Length: > 0 } value ? value : stand, diagnostics);
            if (admin is not null)
            {
                listen = admin.Listen;
                token = needToken ? admin.Token : null;
                return true;
            }
        }
        foreach (var d in diagnostics.Items)
        {
            error.WriteLine(d.ToString());
        }
        return false;
    }

    /// <summary>
    /// Sends one request; a JSON body is optional. Null when the API could not be reached, after one line on
    /// <paramref name="error"/>. Cancelling <paramref name="cancellationToken"/> throws.
    /// </summary>
    public async Task<AdminResponse?> SendAsync(HttpMethod method, string path, byte[]? jsonBody, TextWriter error, CancellationToken cancellationToken)
    {
        using var request = new HttpRequestMessage(method, new Uri(BaseUri, path));
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", _token);
        request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("application/json"));
        if (jsonBody is not null)
        {
            request.Content = new ByteArrayContent(jsonBody);
            request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        }
        try
        {
            using var response = await _http.SendAsync(request, cancellationToken).ConfigureAwait(false);
            var body = await response.Content.ReadAsByteArrayAsync(cancellationToken).ConfigureAwait(false);
            return new AdminResponse(response.StatusCode, response.ReasonPhrase, body);
        }
        catch (HttpRequestException ex)
        {
            error.WriteLine(Messages.Unreachable(Display, ex.Message));
        }
        catch (TaskCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            error.WriteLine(Messages.Unreachable(Display, $"no answer within {Timeout.TotalSeconds:0} s"));
        }
        return null;
    }

    /// <summary>
    /// Writes why the API refused (one line: its <c>{ "error": "…" }</c> message, or the status) and returns
    /// <see cref="Refused"/>.
    /// </summary>
    public static int Refuse(in AdminResponse response, TextWriter error)
    {
        var code = (int)response.Status;
        if (response.Status == HttpStatusCode.Unauthorized)
        {
            error.WriteLine(Messages.TokenRefused);
        }
        else if (ErrorMessage(response.Body) is { } message)
        {
            error.WriteLine($"{Printable(message)} ({code})");
        }
        else
        {
            error.WriteLine(Messages.Status(code, response.ReasonPhrase));
        }
        return Refused;
    }

    /// <summary>The <c>error</c> string of an error body, if it is one.</summary>
    internal static string? ErrorMessage(byte[] body)
    {
        try
        {
            using var doc = JsonDocument.Parse(body);
            return doc.RootElement.ValueKind == JsonValueKind.Object
                && doc.RootElement.TryGetProperty("error", out var e) && e.ValueKind == JsonValueKind.String
                && e.GetString() is { Length: > 0 } message
                ? message
                : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    /// <summary>A member as text: a string as is, a number or boolean as written, null when absent or null.</summary>
    internal static string? Text(JsonElement obj, string name)
        => obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(name, out var value)
            ? value.ValueKind switch
            {
                JsonValueKind.String => value.GetString(),
                JsonValueKind.Number or JsonValueKind.True or JsonValueKind.False => value.GetRawText(),
                _ => null,
            }
            : null;

    /// <summary>
    /// Text from the API (tool names, identities and reasons come from agents and people) made safe for a terminal:
    /// control characters, escape sequences among them, are written as <c>\uXXXX</c>.
    /// </summary>
    internal static string Printable(string text)
    {
        var clean = true;
        foreach (var c in text)
        {
            if (char.IsControl(c))
            {
                clean = false;
                break;
            }
        }
        if (clean)
        {
            return text;
        }
        var builder = new StringBuilder(text.Length + 16);
        foreach (var c in text)
        {
            if (char.IsControl(c))
            {
                builder.Append("\\u").Append(((int)c).ToString("x4", System.Globalization.CultureInfo.InvariantCulture));
            }
            else
            {
                builder.Append(c);
            }
        }
        return builder.ToString();
    }

    public void Dispose() => _http.Dispose();

    /// <summary>Every message of the admin verbs, kept together.</summary>
    internal static class Messages
    {
        public const string TokenRefused = "the admin API refused the token (401)";

        public const string NoUrl = $"no admin API address: give --admin URL (e.g. http://{AdminConfig.DefaultListen}) or --config FILE (or set {ConfigVariable})";

        public const string NoToken = $"no admin token: set {DefaultTokenVariable}, or give --token-env NAME or --config FILE";

        public const string TokenNotPrintable = "the admin token has characters a header cannot carry (spaces, line breaks, non-ASCII)";

        public static string BadUrl(string text) => $"--admin: \"{Printable(text)}\" is not an http:// or https:// URL without query, e.g. http://{AdminConfig.DefaultListen}";

        public static string TokenVariableNotSet(string name) => $"--token-env: environment variable {name} is not set";

        public static string NoAdminSection(string path)
            => $"{path}: no \"admin\" section, so the gateway runs no admin API: add \"admin\": {{ \"listen\": \"{AdminConfig.DefaultListen}\", \"token\": \"${{{DefaultTokenVariable}}}\" }}";

        public static string ListenNotConnectable(string path, string listen)
            => $"{path}: admin.listen \"{listen}\" names no port to connect to (port 0 is chosen at start-up): give --admin URL";

        public static string Unreachable(string url, string reason)
            => $"cannot reach the admin API at {url}: {reason.ReplaceLineEndings(" ")}";

        public static string Status(int code, string? reason)
            => $"the admin API answered {code}{(string.IsNullOrEmpty(reason) ? "" : " " + Printable(reason))}";

        public static string NotJson(string what, string problem) => $"the admin API's answer is not {what}: {problem}";
    }
}
