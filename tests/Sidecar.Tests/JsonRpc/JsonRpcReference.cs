using System.Text.Json;
using Sidecar.JsonRpc;

namespace Sidecar.Tests.JsonRpc;

/// <summary>
/// An independent model of the scanner's contract, built on System.Text.Json's DOM (which rejects duplicate
/// properties itself). Used by the differential test.
/// </summary>
internal static class JsonRpcReference
{
    /// <summary>The reference's verdict. <see cref="Syntax"/> means "the DOM parser refused the bytes".</summary>
    internal enum Verdict
    {
        Syntax,
        InvalidUtf8,
        Status,
    }

    internal sealed class Result
    {
        public Verdict Verdict;
        public ScanStatus Status;
        public JsonRpcMessageKind Kind;
        public JsonRpcIdKind IdKind;
        public string? IdRaw;
        public McpMethod Method;
        public string? MethodRaw;
        public string? ParamsRaw;
        public string? NameRaw;
        public string? Name;
        public string? UriRaw;
        public string? ArgumentsRaw;
        public List<string>? BatchElements;
    }

    private static readonly Dictionary<string, McpMethod> Methods =
        JsonRpcScannerTests.AllMethods.ToDictionary(row => (string)row[0], row => (McpMethod)row[1]);

    public static Result Evaluate(byte[] message, JsonRpcScannerOptions options)
    {
        if (!System.Text.Unicode.Utf8.IsValid(message))
        {
            return new Result { Verdict = Verdict.InvalidUtf8 };
        }

        try
        {
            using JsonDocument document = JsonDocument.Parse(message, new JsonDocumentOptions
            {
                AllowDuplicateProperties = false,
                MaxDepth = options.MaxDepth,
                AllowTrailingCommas = false,
                CommentHandling = JsonCommentHandling.Disallow,
            });
            return EvaluateRoot(document.RootElement, options);
        }
        catch (JsonException)
        {
            return new Result { Verdict = Verdict.Syntax };
        }
        catch (InvalidOperationException)
        {
            // Unpaired surrogate escapes in property names (found by the duplicate check) or in interpreted strings.
            return new Result { Verdict = Verdict.Syntax };
        }
    }

    private static Result EvaluateRoot(JsonElement root, JsonRpcScannerOptions options)
    {
        switch (root.ValueKind)
        {
            case JsonValueKind.Object:
                return EvaluateEnvelope(root);
            case JsonValueKind.Array:
                int length = root.GetArrayLength();
                List<Result> elements = [.. root.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.Object ? EvaluateEnvelope(e) : Fail(ScanStatus.InvalidRequest))];
                if (length == 0)
                {
                    return Fail(ScanStatus.EmptyBatch);
                }

                if (length > options.MaxBatchLength)
                {
                    return Fail(ScanStatus.InvalidRequest);
                }

                Result? bad = elements.FirstOrDefault(e => e.Status != ScanStatus.Ok);
                return bad is not null
                    ? Fail(bad.Status)
                    : new Result
                    {
                        Verdict = Verdict.Status,
                        Status = ScanStatus.Ok,
                        Kind = JsonRpcMessageKind.Batch,
                        BatchElements = [.. root.EnumerateArray().Select(e => e.GetRawText())],
                    };
            default:
                return Fail(ScanStatus.InvalidRequest);
        }
    }

    private static Result Fail(ScanStatus status) => new() { Verdict = Verdict.Status, Status = status, Kind = JsonRpcMessageKind.Invalid };

    private static Result EvaluateEnvelope(JsonElement envelope)
    {
        Result r = new() { Verdict = Verdict.Status };
        int jsonrpc = 0; // 0 absent, 1 valid, 2 invalid
        int method = 0;
        bool badId = false;
        int parameters = 0; // 0 absent, 1 object, 2 array, 3 invalid
        bool hasResult = false, hasError = false, badArguments = false;
        foreach (JsonProperty property in envelope.EnumerateObject())
        {
            JsonElement v = property.Value;
            switch (property.Name)
            {
                case "jsonrpc":
                    jsonrpc = v.ValueKind == JsonValueKind.String && v.GetString() == "2.0" ? 1 : 2;
                    break;
                case "method":
                    method = v.ValueKind == JsonValueKind.String ? 1 : 2;
                    if (method == 1)
                    {
                        r.MethodRaw = v.GetRawText();
                        r.Method = Methods.GetValueOrDefault(v.GetString()!, McpMethod.Other);
                    }

                    break;
                case "id":
                    r.IdKind = v.ValueKind switch
                    {
                        JsonValueKind.String => JsonRpcIdKind.String,
                        JsonValueKind.Number => JsonRpcIdKind.Number,
                        JsonValueKind.Null => JsonRpcIdKind.Null,
                        _ => JsonRpcIdKind.None,
                    };
                    badId = r.IdKind == JsonRpcIdKind.None;
                    r.IdRaw = badId ? null : v.GetRawText();
                    break;
                case "params":
                    parameters = v.ValueKind switch { JsonValueKind.Object => 1, JsonValueKind.Array => 2, _ => 3 };
                    r.ParamsRaw = parameters is 1 or 2 ? v.GetRawText() : null;
                    if (parameters == 1)
                    {
                        foreach (JsonProperty p in v.EnumerateObject())
                        {
                            switch (p.Name)
                            {
                                case "name" when p.Value.ValueKind == JsonValueKind.String:
                                    r.NameRaw = p.Value.GetRawText();
                                    r.Name = p.Value.GetString();
                                    break;
                                case "uri" when p.Value.ValueKind == JsonValueKind.String:
                                    r.UriRaw = p.Value.GetRawText();
                                    _ = p.Value.GetString();
                                    break;
                                case "arguments":
                                    badArguments = p.Value.ValueKind != JsonValueKind.Object;
                                    r.ArgumentsRaw = badArguments ? null : p.Value.GetRawText();
                                    break;
                            }
                        }
                    }

                    break;
                case "result":
                    hasResult = true;
                    break;
                case "error":
                    hasError = true;
                    break;
            }
        }

        r.Status = Rules();
        if (r.Status == ScanStatus.InvalidRequest)
        {
            r.Kind = JsonRpcMessageKind.Invalid;
        }

        return r;

        ScanStatus Rules()
        {
            if (jsonrpc != 1 || method == 2 || badId || parameters == 3)
            {
                return ScanStatus.InvalidRequest;
            }

            if (method == 1)
            {
                if (hasResult || hasError || r.IdKind == JsonRpcIdKind.Null)
                {
                    return ScanStatus.InvalidRequest;
                }

                r.Kind = r.IdKind == JsonRpcIdKind.None ? JsonRpcMessageKind.Notification : JsonRpcMessageKind.Request;
                if (r.Method == McpMethod.ToolsCall && (parameters != 1 || r.NameRaw is null || badArguments))
                {
                    return ScanStatus.InvalidParams;
                }

                return ScanStatus.Ok;
            }

            if (hasResult == hasError || r.IdKind == JsonRpcIdKind.None)
            {
                return ScanStatus.InvalidRequest;
            }

            r.Kind = hasResult ? JsonRpcMessageKind.Response : JsonRpcMessageKind.ErrorResponse;
            return ScanStatus.Ok;
        }
    }
}
