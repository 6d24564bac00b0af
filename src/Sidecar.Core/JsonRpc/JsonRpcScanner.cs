using System.Buffers;
using System.Runtime.CompilerServices;
using System.Text.Json;
using System.Text.Unicode;

namespace Sidecar.JsonRpc;

/// <summary>
/// Scans one JSON-RPC 2.0 message (an HTTP body or one stdio line) without building a DOM and without allocating
/// on the common path, and extracts what a policy gateway needs. Because the gateway forwards the original bytes,
/// anything another JSON parser could read differently is rejected: invalid UTF-8, any syntax outside RFC 8259,
/// duplicate property names in any object (compared unescaped), unpaired surrogate escapes in property names or
/// in the strings the scanner interprets, and nesting deeper than the configured limit.
/// </summary>
public static partial class JsonRpcScanner
{
    private const int StackEntries = 32;
    private const int StackArena = 256;
    private const int StackUnescape = 256;

    /// <summary>Scans a message held in one contiguous buffer.</summary>
    /// <returns>The same value as <see cref="JsonRpcScan.Status"/>.</returns>
    public static ScanStatus Scan(ReadOnlySpan<byte> message, out JsonRpcScan scan, JsonRpcScannerOptions? options = null)
    {
        options ??= JsonRpcScannerOptions.Default;
        scan = default;
        scan.ErrorOffset = -1;
        if (message.Length > options.MaxMessageBytes)
        {
            return Reject(ref scan, ScanStatus.TooLarge, Errors.TooLarge, -1);
        }

        if (!Utf8.IsValid(message))
        {
            return RejectUtf8(ref scan, Utf8Validation.FindFirstInvalid(message));
        }

        scoped Utf8JsonReader reader = new(message, ReaderOptions(options));
        scoped KeyTracker keys = new(stackalloc KeyEntry[StackEntries], stackalloc byte[StackArena], message, referenceSource: true);
        try
        {
            return ScanTokens(ref reader, ref keys, ref scan, options);
        }
        catch (JsonException ex)
        {
            return Reject(ref scan, ScanStatus.ParseError, Errors.Syntax, SyntaxOffset(ex, message));
        }
        catch (InvalidOperationException)
        {
            return Reject(ref scan, ScanStatus.ParseError, Errors.BadSurrogate, reader.TokenStartIndex);
        }
        finally
        {
            keys.Dispose();
        }
    }

    /// <summary>Scans a message that may be split over several segments; a single-segment sequence takes the span path.</summary>
    /// <returns>The same value as <see cref="JsonRpcScan.Status"/>.</returns>
    public static ScanStatus Scan(in ReadOnlySequence<byte> message, out JsonRpcScan scan, JsonRpcScannerOptions? options = null)
    {
        if (message.IsSingleSegment)
        {
            return Scan(message.FirstSpan, out scan, options);
        }

        options ??= JsonRpcScannerOptions.Default;
        if (message.Length > options.MaxMessageBytes)
        {
            scan = default;
            return Reject(ref scan, ScanStatus.TooLarge, Errors.TooLarge, -1);
        }

        ReadOnlySequence<byte> trimmed = WithoutTrailingEmptySegments(message);
        return trimmed.IsSingleSegment
            ? Scan(trimmed.FirstSpan, out scan, options)
            : ScanSegments(trimmed, out scan, options);
    }

    /// <summary>
    /// Drops empty segments at the end of a multi-segment sequence (offsets are unchanged). Utf8JsonReader (.NET 10)
    /// throws IndexOutOfRangeException instead of JsonException for a literal truncated at the end of the data when
    /// an empty segment follows it (e.g. segments "[", "tr", ""); without trailing empty segments it reports a JsonException.
    /// </summary>
    private static ReadOnlySequence<byte> WithoutTrailingEmptySegments(in ReadOnlySequence<byte> message)
    {
        SequencePosition start = message.Start;
        SequencePosition end = message.End;
        if (end.GetInteger() != 0
            || start.GetObject() is not ReadOnlySequenceSegment<byte> first
            || end.GetObject() is not ReadOnlySequenceSegment<byte> endSegment)
        {
            return message;
        }

        int startIndex = start.GetInteger();
        ReadOnlySequenceSegment<byte> last = first;
        int lastEnd = startIndex;
        for (ReadOnlySequenceSegment<byte>? segment = first; segment is not null; segment = segment.Next)
        {
            int from = ReferenceEquals(segment, first) ? startIndex : 0;
            int to = ReferenceEquals(segment, endSegment) ? 0 : segment.Memory.Length;
            if (to > from)
            {
                last = segment;
                lastEnd = to;
            }

            if (ReferenceEquals(segment, endSegment))
            {
                break;
            }
        }

        return new ReadOnlySequence<byte>(first, startIndex, last, lastEnd);
    }

    private static ScanStatus ScanSegments(in ReadOnlySequence<byte> message, out JsonRpcScan scan, JsonRpcScannerOptions options)
    {
        scan = default;
        scan.ErrorOffset = -1;

        if (!Utf8Validation.IsValid(message))
        {
            return RejectUtf8(ref scan, Utf8Validation.FindFirstInvalid(message));
        }

        scoped Utf8JsonReader reader = new(message, ReaderOptions(options));
        scoped KeyTracker keys = new(stackalloc KeyEntry[StackEntries], stackalloc byte[StackArena], default, referenceSource: false);
        try
        {
            return ScanTokens(ref reader, ref keys, ref scan, options);
        }
        catch (JsonException ex)
        {
            return Reject(ref scan, ScanStatus.ParseError, Errors.Syntax, SyntaxOffset(ex, message));
        }
        catch (InvalidOperationException)
        {
            return Reject(ref scan, ScanStatus.ParseError, Errors.BadSurrogate, reader.TokenStartIndex);
        }
        catch (IndexOutOfRangeException)
        {
            // Safety net for the multi-segment reader's truncated-literal bug (see WithoutTrailingEmptySegments):
            // Scan must reject, never throw. That bug only fires at the end of the data.
            return Reject(ref scan, ScanStatus.ParseError, Errors.Syntax, message.Length);
        }
        finally
        {
            keys.Dispose();
        }
    }

    private static JsonReaderOptions ReaderOptions(JsonRpcScannerOptions options) => new()
    {
        CommentHandling = JsonCommentHandling.Disallow,
        AllowTrailingCommas = false,
        AllowMultipleValues = false,
        // One level more than ours so that our own, distinct TooDeep check fires first.
        MaxDepth = options.MaxDepth == int.MaxValue ? int.MaxValue : options.MaxDepth + 1,
    };

    /// <summary>Which envelope or params member the next value belongs to.</summary>
    private enum Member : byte
    {
        None,
        JsonRpc,
        Method,
        Id,
        Params,
        Result,
        Error,
        Name,
        Uri,
        Arguments,
    }

    private enum MemberState : byte
    {
        Absent,
        Valid,
        Invalid,
    }

    private enum ParamsShape : byte
    {
        Absent,
        Object,
        Array,
        Invalid,
    }

    /// <summary>What one envelope (the root object, or one batch element) contained.</summary>
    private struct Envelope
    {
        public int Start;
        public MemberState JsonRpc;
        public int JsonRpcPos;
        public MemberState MethodState;
        public int MethodPos;
        public McpMethod Method;
        public TokenRange MethodName;
        public bool IdInvalid;
        public int IdPos;
        public JsonRpcIdKind IdKind;
        public TokenRange Id;
        public ParamsShape ParamsShape;
        public int ParamsPos;
        public TokenRange Params;
        public bool HasResult;
        public bool HasError;
        public TokenRange Name;
        public bool NameEscaped;
        public TokenRange Uri;
        public TokenRange Arguments;
        public bool ArgumentsInvalid;
        public int ArgumentsPos;
    }

    /// <summary>A rejection decided by envelope rules; kept while scanning goes on so that syntax errors take precedence.</summary>
    private readonly struct Rejection(ScanStatus status, string? error, long offset)
    {
        public readonly ScanStatus Status = status;
        public readonly string? Error = error;
        public readonly long Offset = offset;
    }

    private static ScanStatus ScanTokens(ref Utf8JsonReader reader, ref KeyTracker keys, ref JsonRpcScan scan, JsonRpcScannerOptions options)
    {
        if (!reader.Read())
        {
            return Reject(ref scan, ScanStatus.ParseError, Errors.Syntax, 0);
        }

        JsonTokenType root = reader.TokenType;
        if (root != JsonTokenType.StartObject && root != JsonTokenType.StartArray)
        {
            return ScanScalarRoot(ref reader, ref scan);
        }

        bool batch = root == JsonTokenType.StartArray;
        int envelopeDepth = batch ? 2 : 1;
        int maxDepth = options.MaxDepth;
        int depth = 1;
        int paramsDepth = 0;
        int argumentsDepth = 0;
        int batchLength = 0;
        Member pending = Member.None;
        Envelope env = default;
        Rejection first = default;
        if (!batch)
        {
            env.Start = (int)reader.TokenStartIndex;
            keys.PushObject();
        }

        while (reader.Read())
        {
            JsonTokenType token = reader.TokenType;
            switch (token)
            {
                case JsonTokenType.PropertyName:
                    if (!keys.Add(ref reader, out ReadOnlySpan<byte> name))
                    {
                        return Reject(ref scan, ScanStatus.DuplicateKey, Errors.DuplicateKey, reader.TokenStartIndex);
                    }

                    if (depth == envelopeDepth)
                    {
                        pending = EnvelopeMember(name);
                    }
                    else if (depth == paramsDepth)
                    {
                        pending = ParamsMember(name);
                    }

                    break;

                case JsonTokenType.StartObject:
                case JsonTokenType.StartArray:
                    if (++depth > maxDepth)
                    {
                        return Reject(ref scan, ScanStatus.TooDeep, Errors.TooDeep, reader.TokenStartIndex);
                    }

                    if (token == JsonTokenType.StartObject)
                    {
                        keys.PushObject();
                    }

                    if (pending != Member.None)
                    {
                        OnContainerValue(ref env, pending, token, depth, (int)reader.TokenStartIndex, ref paramsDepth, ref argumentsDepth);
                        pending = Member.None;
                    }
                    else if (batch && depth == 2)
                    {
                        batchLength++;
                        env = default;
                        env.Start = (int)reader.TokenStartIndex;
                    }

                    break;

                case JsonTokenType.EndObject:
                case JsonTokenType.EndArray:
                    if (token == JsonTokenType.EndObject && !keys.PopObject(out int duplicate))
                    {
                        return Reject(ref scan, ScanStatus.DuplicateKey, Errors.DuplicateKey, duplicate);
                    }

                    if (depth == argumentsDepth)
                    {
                        env.Arguments = Close(env.Arguments, ref reader);
                        argumentsDepth = 0;
                    }
                    else if (depth == paramsDepth)
                    {
                        env.Params = Close(env.Params, ref reader);
                        paramsDepth = 0;
                    }
                    else if (batch && depth == 2 && first.Status == ScanStatus.Ok)
                    {
                        first = token == JsonTokenType.EndObject
                            ? Validate(in env, out _)
                            : new Rejection(ScanStatus.InvalidRequest, Errors.BatchElementNotObject, env.Start);
                    }

                    depth--;
                    break;

                default:
                    if (pending != Member.None)
                    {
                        OnScalarValue(ref reader, ref env, pending);
                        pending = Member.None;
                    }
                    else if (batch && depth == 1)
                    {
                        batchLength++;
                        if (first.Status == ScanStatus.Ok)
                        {
                            first = new Rejection(ScanStatus.InvalidRequest, Errors.BatchElementNotObject, reader.TokenStartIndex);
                        }
                    }

                    break;
            }
        }

        if (depth != 0)
        {
            return Reject(ref scan, ScanStatus.ParseError, Errors.Syntax, reader.BytesConsumed);
        }

        return batch ? FinishBatch(ref scan, batchLength, first, options) : FinishSingle(ref scan, in env);
    }

    private static ScanStatus FinishSingle(ref JsonRpcScan scan, in Envelope env)
    {
        Rejection rejection = Validate(in env, out JsonRpcMessageKind kind);
        scan.Kind = kind;
        scan.IdKind = env.IdKind;
        scan.Id = env.Id;
        scan.Method = env.Method;
        scan.MethodName = env.MethodName;
        scan.Params = env.Params;
        scan.Name = env.Name;
        scan.NameEscaped = env.NameEscaped;
        scan.Uri = env.Uri;
        scan.Arguments = env.Arguments;
        scan.Status = rejection.Status;
        if (rejection.Status != ScanStatus.Ok)
        {
            scan.Error = rejection.Error;
            scan.ErrorOffset = rejection.Offset;
        }

        return rejection.Status;
    }

    private static ScanStatus FinishBatch(ref JsonRpcScan scan, int batchLength, in Rejection first, JsonRpcScannerOptions options)
    {
        if (batchLength == 0)
        {
            return Reject(ref scan, ScanStatus.EmptyBatch, Errors.EmptyBatch, -1);
        }

        if (batchLength > options.MaxBatchLength)
        {
            return Reject(ref scan, ScanStatus.InvalidRequest, Errors.BatchTooLong, -1);
        }

        if (first.Status != ScanStatus.Ok)
        {
            // The whole batch is well-formed JSON without duplicate keys (those stop the scan at once), but an element
            // breaks the envelope rules: rejected as a whole here; BatchLength tells a caller that can answer the
            // elements one by one (JSON-RPC 2.0 answers each invalid element with its own error) that it may split it.
            Reject(ref scan, first.Status, first.Error, first.Offset);
            scan.BatchLength = batchLength;
            return first.Status;
        }

        scan.Kind = JsonRpcMessageKind.Batch;
        scan.BatchLength = batchLength;
        return ScanStatus.Ok;
    }

    /// <summary>Applies the JSON-RPC 2.0 envelope rules and the gateway's params rules to one envelope.</summary>
    private static Rejection Validate(in Envelope env, out JsonRpcMessageKind kind)
    {
        kind = JsonRpcMessageKind.Invalid;
        if (env.JsonRpc != MemberState.Valid)
        {
            return new(ScanStatus.InvalidRequest, Errors.BadVersion, env.JsonRpc == MemberState.Absent ? env.Start : env.JsonRpcPos);
        }

        if (env.MethodState == MemberState.Invalid)
        {
            return new(ScanStatus.InvalidRequest, Errors.MethodNotString, env.MethodPos);
        }

        if (env.IdInvalid)
        {
            return new(ScanStatus.InvalidRequest, Errors.BadId, env.IdPos);
        }

        if (env.ParamsShape == ParamsShape.Invalid)
        {
            return new(ScanStatus.InvalidRequest, Errors.BadParams, env.ParamsPos);
        }

        if (env.MethodState == MemberState.Valid)
        {
            if (env.HasResult || env.HasError)
            {
                return new(ScanStatus.InvalidRequest, Errors.MethodWithResult, env.Start);
            }

            if (env.IdKind == JsonRpcIdKind.Null)
            {
                return new(ScanStatus.InvalidRequest, Errors.NullRequestId, env.IdPos);
            }

            kind = env.IdKind == JsonRpcIdKind.None ? JsonRpcMessageKind.Notification : JsonRpcMessageKind.Request;
            return env.Method == McpMethod.ToolsCall ? ValidateToolsCall(in env) : default;
        }

        if (env.HasResult == env.HasError)
        {
            return new(ScanStatus.InvalidRequest, env.HasResult ? Errors.ResultAndError : Errors.NoMethodNoResult, env.Start);
        }

        if (env.IdKind == JsonRpcIdKind.None)
        {
            return new(ScanStatus.InvalidRequest, Errors.ResponseWithoutId, env.Start);
        }

        kind = env.HasResult ? JsonRpcMessageKind.Response : JsonRpcMessageKind.ErrorResponse;
        return default;
    }

    private static Rejection ValidateToolsCall(in Envelope env)
    {
        if (env.ParamsShape != ParamsShape.Object)
        {
            return new(ScanStatus.InvalidParams, Errors.ToolsCallParams, env.ParamsShape == ParamsShape.Absent ? env.Start : env.ParamsPos);
        }

        if (env.Name.IsEmpty)
        {
            return new(ScanStatus.InvalidParams, Errors.ToolsCallName, env.ParamsPos);
        }

        if (env.ArgumentsInvalid)
        {
            return new(ScanStatus.InvalidParams, Errors.ToolsCallArguments, env.ArgumentsPos);
        }

        return default;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TokenRange Close(TokenRange open, ref Utf8JsonReader reader)
        => new(open.Start, (int)reader.BytesConsumed - open.Start);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TokenRange ScalarRange(ref Utf8JsonReader reader, int start)
        => new(start, (int)reader.BytesConsumed - start);

    private static Member EnvelopeMember(ReadOnlySpan<byte> name) => name.Length switch
    {
        2 => name.SequenceEqual("id"u8) ? Member.Id : Member.None,
        5 => name.SequenceEqual("error"u8) ? Member.Error : Member.None,
        6 => name.SequenceEqual("method"u8) ? Member.Method
            : name.SequenceEqual("params"u8) ? Member.Params
            : name.SequenceEqual("result"u8) ? Member.Result
            : Member.None,
        7 => name.SequenceEqual("jsonrpc"u8) ? Member.JsonRpc : Member.None,
        _ => Member.None,
    };

    private static Member ParamsMember(ReadOnlySpan<byte> name) => name.Length switch
    {
        3 => name.SequenceEqual("uri"u8) ? Member.Uri : Member.None,
        4 => name.SequenceEqual("name"u8) ? Member.Name : Member.None,
        9 => name.SequenceEqual("arguments"u8) ? Member.Arguments : Member.None,
        _ => Member.None,
    };

    private static void OnScalarValue(ref Utf8JsonReader reader, ref Envelope env, Member member)
    {
        int pos = (int)reader.TokenStartIndex;
        bool isString = reader.TokenType == JsonTokenType.String;
        switch (member)
        {
            case Member.JsonRpc:
                env.JsonRpcPos = pos;
                env.JsonRpc = isString && IsVersion20(ref reader) ? MemberState.Valid : MemberState.Invalid;
                break;
            case Member.Method:
                env.MethodPos = pos;
                if (isString)
                {
                    env.MethodState = MemberState.Valid;
                    env.MethodName = ScalarRange(ref reader, pos);
                    env.Method = MatchMethod(ref reader);
                }
                else
                {
                    env.MethodState = MemberState.Invalid;
                }

                break;
            case Member.Id:
                env.IdPos = pos;
                env.IdKind = reader.TokenType switch
                {
                    JsonTokenType.String => JsonRpcIdKind.String,
                    JsonTokenType.Number => JsonRpcIdKind.Number,
                    JsonTokenType.Null => JsonRpcIdKind.Null,
                    _ => JsonRpcIdKind.None,
                };
                env.IdInvalid = env.IdKind == JsonRpcIdKind.None;
                env.Id = env.IdInvalid ? default : ScalarRange(ref reader, pos);
                break;
            case Member.Params:
                env.ParamsShape = ParamsShape.Invalid;
                env.ParamsPos = pos;
                break;
            case Member.Result:
                env.HasResult = true;
                break;
            case Member.Error:
                env.HasError = true;
                break;
            case Member.Name:
                if (isString)
                {
                    env.Name = ScalarRange(ref reader, pos);
                    env.NameEscaped = reader.ValueIsEscaped;
                    if (env.NameEscaped)
                    {
                        ValidateEscapes(in reader);
                    }
                }

                break;
            case Member.Uri:
                if (isString)
                {
                    env.Uri = ScalarRange(ref reader, pos);
                    if (reader.ValueIsEscaped)
                    {
                        ValidateEscapes(in reader);
                    }
                }

                break;
            case Member.Arguments:
                env.ArgumentsInvalid = true;
                env.ArgumentsPos = pos;
                break;
        }
    }

    private static void OnContainerValue(ref Envelope env, Member member, JsonTokenType token, int depth, int pos, ref int paramsDepth, ref int argumentsDepth)
    {
        switch (member)
        {
            case Member.JsonRpc:
                env.JsonRpc = MemberState.Invalid;
                env.JsonRpcPos = pos;
                break;
            case Member.Method:
                env.MethodState = MemberState.Invalid;
                env.MethodPos = pos;
                break;
            case Member.Id:
                env.IdInvalid = true;
                env.IdKind = JsonRpcIdKind.None;
                env.Id = default;
                env.IdPos = pos;
                break;
            case Member.Params:
                env.ParamsShape = token == JsonTokenType.StartObject ? ParamsShape.Object : ParamsShape.Array;
                env.ParamsPos = pos;
                env.Params = new TokenRange(pos, 0);
                paramsDepth = depth;
                break;
            case Member.Result:
                env.HasResult = true;
                break;
            case Member.Error:
                env.HasError = true;
                break;
            case Member.Arguments:
                if (token == JsonTokenType.StartObject)
                {
                    env.Arguments = new TokenRange(pos, 0);
                    argumentsDepth = depth;
                }
                else
                {
                    env.ArgumentsInvalid = true;
                    env.ArgumentsPos = pos;
                }

                break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool IsVersion20(ref Utf8JsonReader reader)
        => !reader.ValueIsEscaped && !reader.HasValueSequence
            ? reader.ValueSpan.SequenceEqual("2.0"u8)
            : UnescapedEquals(in reader, "2.0"u8);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static McpMethod MatchMethod(ref Utf8JsonReader reader)
        => !reader.ValueIsEscaped && !reader.HasValueSequence
            ? McpMethods.Parse(reader.ValueSpan)
            : MatchMethodSlow(in reader);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static McpMethod MatchMethodSlow(in Utf8JsonReader reader)
    {
        Span<byte> buffer = stackalloc byte[StackUnescape];
        ReadOnlySpan<byte> text = CopyUnescaped(in reader, buffer, out byte[]? rented);
        try
        {
            return McpMethods.Parse(text);
        }
        finally
        {
            Return(rented);
        }
    }

    /// <summary>Fully unescapes the current string (so an unpaired surrogate escape throws) and compares it.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static bool UnescapedEquals(in Utf8JsonReader reader, ReadOnlySpan<byte> expected)
    {
        Span<byte> buffer = stackalloc byte[StackUnescape];
        ReadOnlySpan<byte> text = CopyUnescaped(in reader, buffer, out byte[]? rented);
        try
        {
            return text.SequenceEqual(expected);
        }
        finally
        {
            Return(rented);
        }
    }

    /// <summary>Unescapes the current string only to make an unpaired surrogate escape throw.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ValidateEscapes(in Utf8JsonReader reader)
    {
        Span<byte> buffer = stackalloc byte[StackUnescape];
        _ = CopyUnescaped(in reader, buffer, out byte[]? rented);
        Return(rented);
    }

    /// <summary>Unescapes the current string into <paramref name="buffer"/>, or into a pooled array when it is too small.</summary>
    private static ReadOnlySpan<byte> CopyUnescaped(in Utf8JsonReader reader, Span<byte> buffer, out byte[]? rented)
    {
        int raw = reader.HasValueSequence ? checked((int)reader.ValueSequence.Length) : reader.ValueSpan.Length;
        rented = null;
        if (raw > buffer.Length)
        {
            rented = ArrayPool<byte>.Shared.Rent(raw);
            buffer = rented;
        }

        try
        {
            return buffer[..reader.CopyString(buffer)];
        }
        catch
        {
            Return(rented);
            rented = null;
            throw;
        }
    }

    private static void Return(byte[]? rented)
    {
        if (rented is not null)
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    private static ScanStatus ScanScalarRoot(ref Utf8JsonReader reader, ref JsonRpcScan scan)
    {
        long pos = reader.TokenStartIndex;
        while (reader.Read())
        {
            // A scalar root has no more tokens; Read throws on trailing data.
        }

        return Reject(ref scan, ScanStatus.InvalidRequest, Errors.RootNotObject, pos);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static ScanStatus Reject(ref JsonRpcScan scan, ScanStatus status, string? error, long offset)
    {
        scan = default;
        scan.Status = status;
        scan.Error = error;
        scan.ErrorOffset = offset;
        return status;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static ScanStatus RejectUtf8(ref JsonRpcScan scan, long offset)
        => Reject(ref scan, ScanStatus.InvalidUtf8, Errors.InvalidUtf8, offset);

    /// <summary>Turns the reader's (line, byte in line) error position into an offset in the message.</summary>
    private static long SyntaxOffset(JsonException ex, ReadOnlySpan<byte> message)
    {
        if (ex.LineNumber is not long line || ex.BytePositionInLine is not long column)
        {
            return -1;
        }

        int lineStart = 0;
        for (long i = 0; i < line; i++)
        {
            int newline = message[lineStart..].IndexOf((byte)'\n');
            if (newline < 0)
            {
                return -1;
            }

            lineStart += newline + 1;
        }

        return lineStart + column;
    }

    private static long SyntaxOffset(JsonException ex, in ReadOnlySequence<byte> message)
    {
        if (ex.LineNumber is not long line || ex.BytePositionInLine is not long column)
        {
            return -1;
        }

        SequenceReader<byte> lines = new(message);
        for (long i = 0; i < line; i++)
        {
            if (!lines.TryAdvanceTo((byte)'\n'))
            {
                return -1;
            }
        }

        return lines.Consumed + column;
    }

    /// <summary>Static rejection messages (no allocation when reporting).</summary>
    private static class Errors
    {
        public const string TooLarge = "Message exceeds the maximum size.";
        public const string InvalidUtf8 = "Message is not valid UTF-8.";
        public const string Syntax = "Message is not valid JSON.";
        public const string BadSurrogate = "A string contains an unpaired UTF-16 surrogate escape.";
        public const string TooDeep = "Message is nested too deeply.";
        public const string DuplicateKey = "An object contains a duplicate property name.";
        public const string RootNotObject = "Message must be a JSON object or a batch array.";
        public const string EmptyBatch = "Batch is empty.";
        public const string BatchTooLong = "Batch has too many elements.";
        public const string BatchElementNotObject = "Batch element is not an object.";
        public const string BadVersion = "Member 'jsonrpc' must be the string \"2.0\".";
        public const string MethodNotString = "Member 'method' must be a string.";
        public const string BadId = "Member 'id' must be a string, a number or null.";
        public const string BadParams = "Member 'params' must be an object or an array.";
        public const string MethodWithResult = "A request or notification must not contain 'result' or 'error'.";
        public const string NullRequestId = "A request id must not be null.";
        public const string ResultAndError = "A response must not contain both 'result' and 'error'.";
        public const string NoMethodNoResult = "Message has neither 'method' nor 'result'/'error'.";
        public const string ResponseWithoutId = "A response must have an 'id'.";
        public const string ToolsCallParams = "tools/call requires 'params' to be an object.";
        public const string ToolsCallName = "tools/call requires 'params.name' to be a string.";
        public const string ToolsCallArguments = "tools/call requires 'params.arguments', when present, to be an object.";
    }
}
