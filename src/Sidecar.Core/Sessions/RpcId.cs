using System.Text.Json;

namespace Sidecar.Sessions;

/// <summary>
/// A JSON-RPC id as a lookup key, compared the way the peer will compare it: strings after unescaping, numbers by
/// value (a JavaScript server answers id <c>1.0</c> as <c>1</c>). The agent's raw id token is kept separately and
/// always echoed back unchanged.
/// </summary>
internal readonly record struct RpcId(string? Text, decimal Number)
{
    public static bool TryCreate(ReadOnlySpan<byte> rawToken, out RpcId id)
    {
        id = default;
        if (rawToken.IsEmpty)
        {
            return false;
        }
        try
        {
            var reader = new Utf8JsonReader(rawToken);
            reader.Read();
            switch (reader.TokenType)
            {
                case JsonTokenType.String:
                    id = new RpcId(reader.GetString(), 0);
                    return true;
                case JsonTokenType.Number when reader.TryGetDecimal(out var number):
                    id = new RpcId(null, number);
                    return true;
                default:
                    return false;
            }
        }
        catch (Exception ex) when (ex is JsonException or InvalidOperationException)
        {
            return false;
        }
    }

    public override string ToString() => Text ?? Number.ToString(System.Globalization.CultureInfo.InvariantCulture);
}
