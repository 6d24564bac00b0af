using System.Text.Json;

namespace Sidecar.Audit;

/// <summary>
/// An audit event that is not a call: its <c>type</c> and a writer for its own fields (after <c>seq</c>, <c>id</c>,
/// <c>time</c>, <c>type</c>; before <c>prev</c> and <c>hash</c>). Not redacted: only the gateway's own facts go in
/// (file paths, server names, validation errors), never a message's content.
/// </summary>
public sealed record AuditNotice(string Type, Action<Utf8JsonWriter> Write);
