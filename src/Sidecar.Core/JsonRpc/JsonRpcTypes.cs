using System.Buffers;

namespace Sidecar.JsonRpc;

/// <summary>What kind of JSON-RPC 2.0 message a scan found.</summary>
public enum JsonRpcMessageKind : byte
{
    /// <summary>Not a valid JSON-RPC message (see <see cref="JsonRpcScan.Status"/>).</summary>
    Invalid,
    /// <summary>A call with a <c>method</c> and an <c>id</c>.</summary>
    Request,
    /// <summary>A call with a <c>method</c> and no <c>id</c>.</summary>
    Notification,
    /// <summary>A response carrying <c>result</c>.</summary>
    Response,
    /// <summary>A response carrying <c>error</c>.</summary>
    ErrorResponse,
    /// <summary>A non-empty array of messages.</summary>
    Batch,
}

/// <summary>Outcome of a scan. Everything other than <see cref="Ok"/> is a rejection.</summary>
public enum ScanStatus : byte
{
    /// <summary>The message is well-formed and unambiguous.</summary>
    Ok,
    /// <summary>The message is longer than <see cref="JsonRpcScannerOptions.MaxMessageBytes"/>.</summary>
    TooLarge,
    /// <summary>The message is not valid UTF-8.</summary>
    InvalidUtf8,
    /// <summary>The message is not valid JSON (RFC 8259), or a string the scanner must interpret has an unpaired surrogate escape.</summary>
    ParseError,
    /// <summary>Objects/arrays are nested deeper than <see cref="JsonRpcScannerOptions.MaxDepth"/>.</summary>
    TooDeep,
    /// <summary>An object somewhere in the message has the same (unescaped) property name twice.</summary>
    DuplicateKey,
    /// <summary>Valid JSON, but not a valid JSON-RPC 2.0 message (envelope rules).</summary>
    InvalidRequest,
    /// <summary>A valid envelope whose params break a rule the gateway relies on (e.g. <c>tools/call</c> without a string <c>name</c>).</summary>
    InvalidParams,
    /// <summary>The message is <c>[]</c>.</summary>
    EmptyBatch,
}

/// <summary>The JSON type of a message's <c>id</c>.</summary>
public enum JsonRpcIdKind : byte
{
    /// <summary>No (valid) id member.</summary>
    None,
    /// <summary>A JSON string.</summary>
    String,
    /// <summary>A JSON number.</summary>
    Number,
    /// <summary>JSON <c>null</c> (valid only in responses).</summary>
    Null,
}

/// <summary>
/// A range of bytes inside the scanned message, relative to its first byte.
/// For a string token the range covers the raw token including its quotes.
/// </summary>
public readonly record struct TokenRange(int Start, int Length)
{
    /// <summary>True when the range is empty (the member was absent or not of the expected type).</summary>
    public bool IsEmpty => Length == 0;

    /// <summary>Offset just past the range.</summary>
    public int End => Start + Length;

    /// <summary>The bytes of this range inside <paramref name="message"/>.</summary>
    public ReadOnlySpan<byte> SliceOf(ReadOnlySpan<byte> message) => message.Slice(Start, Length);

    /// <summary>The bytes of this range inside <paramref name="message"/>.</summary>
    public ReadOnlySequence<byte> SliceOf(in ReadOnlySequence<byte> message) => message.Slice(Start, Length);
}

/// <summary>Limits applied by <see cref="JsonRpcScanner"/>.</summary>
public sealed class JsonRpcScannerOptions
{
    /// <summary>Longest accepted message in bytes (checked before anything else). Default 4 MiB.</summary>
    public int MaxMessageBytes
    {
        get;
        init
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            field = value;
        }
    } = 4 * 1024 * 1024;

    /// <summary>Deepest accepted nesting of objects/arrays; the root object is depth 1. Default 64.</summary>
    public int MaxDepth
    {
        get;
        init
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1);
            field = value;
        }
    } = 64;

    /// <summary>Most elements accepted in a batch. Default 100.</summary>
    public int MaxBatchLength
    {
        get;
        init
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            field = value;
        }
    } = 100;

    /// <summary>The default limits.</summary>
    public static JsonRpcScannerOptions Default { get; } = new();
}

/// <summary>
/// Result of <see cref="JsonRpcScanner.Scan(ReadOnlySpan{byte}, out JsonRpcScan, JsonRpcScannerOptions?)"/>.
/// A plain mutable struct so callers can store it. All ranges are relative to the scanned message.
/// </summary>
/// <remarks>
/// On <see cref="ScanStatus.InvalidRequest"/> and <see cref="ScanStatus.InvalidParams"/> the extracted members
/// (id, method, params...) are filled in as far as they were valid, so an error response can echo the id; on
/// <see cref="ScanStatus.InvalidParams"/> <see cref="Kind"/> is still Request or Notification (a notification gets
/// no response). On every other rejection only <see cref="Status"/>, <see cref="Error"/> and <see cref="ErrorOffset"/> are set.
/// </remarks>
#pragma warning disable CA1051 // public fields by design: a cheap, copyable scan record
public struct JsonRpcScan
{
    /// <summary>Outcome of the scan.</summary>
    public ScanStatus Status;

    /// <summary>A static description of the rejection, null when <see cref="Status"/> is Ok.</summary>
    public string? Error;

    /// <summary>Byte offset of the offending token when known, else -1.</summary>
    public long ErrorOffset;

    /// <summary>The message kind (<see cref="JsonRpcMessageKind.Invalid"/> unless Ok or InvalidParams).</summary>
    public JsonRpcMessageKind Kind;

    /// <summary>Type of the <c>id</c> member.</summary>
    public JsonRpcIdKind IdKind;

    /// <summary>Raw <c>id</c> token (strings include their quotes).</summary>
    public TokenRange Id;

    /// <summary>The method, matched on its unescaped text.</summary>
    public McpMethod Method;

    /// <summary>Raw <c>method</c> token, including quotes.</summary>
    public TokenRange MethodName;

    /// <summary>Raw <c>params</c> value (object or array), empty if absent.</summary>
    public TokenRange Params;

    /// <summary><c>params.name</c> raw string token including quotes, empty when absent or not a string.</summary>
    public TokenRange Name;

    /// <summary>True when <see cref="Name"/> contains escape sequences (use <see cref="JsonRpcScanner.TryCopyName(ReadOnlySpan{byte}, in JsonRpcScan, Span{char}, out int)"/>).</summary>
    public bool NameEscaped;

    /// <summary><c>params.uri</c> raw string token including quotes, empty when absent or not a string.</summary>
    public TokenRange Uri;

    /// <summary><c>params.arguments</c> raw value when it is an object, else empty.</summary>
    public TokenRange Arguments;

    /// <summary>
    /// Number of elements when <see cref="Kind"/> is <see cref="JsonRpcMessageKind.Batch"/>; also set (with the first
    /// bad element's status) for a well-formed batch whose elements break the envelope rules, which may be split
    /// and answered element by element.
    /// </summary>
    public int BatchLength;
}
#pragma warning restore CA1051
