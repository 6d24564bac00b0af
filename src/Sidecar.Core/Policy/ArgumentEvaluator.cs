using System.Buffers;
using System.Runtime.CompilerServices;
using System.Text.Json;

namespace Sidecar.Policy;

internal enum ConditionResult : byte
{
    False,
    True,
    /// <summary>The argument exists but has the wrong type for the operator: treated as failing, whichever way fails closed.</summary>
    TypeMismatch,
}

/// <summary>
/// Evaluates compiled conditions against a call's raw <c>arguments</c> JSON, by walking it with a
/// <see cref="Utf8JsonReader"/>: no DOM, no strings, no allocation for string, number and boolean comparisons.
/// Each call passes a reader positioned before the arguments object; the struct is copied, so every walk starts over.
/// </summary>
internal static class ArgumentEvaluator
{
    private const int StackChars = 256;

    /// <summary>Positions <paramref name="reader"/> on the value at <paramref name="segments"/>; false if absent.</summary>
    public static bool TryFind(ref Utf8JsonReader reader, byte[][] segments)
    {
        if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
        {
            return false;
        }
        for (var s = 0; s < segments.Length; s++)
        {
            var segment = segments[s];
            if (reader.TokenType == JsonTokenType.StartObject)
            {
                if (!TryFindMember(ref reader, segment))
                {
                    return false;
                }
            }
            else if (reader.TokenType == JsonTokenType.StartArray && TryParseIndex(segment, out var index))
            {
                if (!TryFindElement(ref reader, index))
                {
                    return false;
                }
            }
            else
            {
                return false;
            }
        }
        return true;
    }

    private static bool TryFindMember(ref Utf8JsonReader reader, byte[] name)
    {
        var depth = reader.CurrentDepth;
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName && reader.CurrentDepth == depth + 1)
        {
            var match = reader.ValueTextEquals(name);
            reader.Read();
            if (match)
            {
                return true;
            }
            reader.Skip();
        }
        return false;
    }

    private static bool TryFindElement(ref Utf8JsonReader reader, int index)
    {
        var i = 0;
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            if (i++ == index)
            {
                return true;
            }
            reader.Skip();
        }
        return false;
    }

    private static bool TryParseIndex(byte[] segment, out int index)
        => System.Buffers.Text.Utf8Parser.TryParse(segment, out index, out var consumed) && consumed == segment.Length && index >= 0;

    public static ConditionResult Evaluate(ConditionModel condition, Utf8JsonReader reader)
    {
        if (!TryFind(ref reader, condition.Segments))
        {
            return condition.Op switch
            {
                ConditionOp.Exists => condition.Operand.Kind == OperandKind.False ? ConditionResult.True : ConditionResult.False,
                ConditionOp.Neq or ConditionOp.NotIn => ConditionResult.True,
                _ => ConditionResult.False,
            };
        }
        switch (condition.Op)
        {
            case ConditionOp.Exists:
                return condition.Operand.Kind == OperandKind.False ? ConditionResult.False : ConditionResult.True;
            case ConditionOp.Eq:
                return Equal(ref reader, condition.Operand) ? ConditionResult.True : ConditionResult.False;
            case ConditionOp.Neq:
                return Equal(ref reader, condition.Operand) ? ConditionResult.False : ConditionResult.True;
            case ConditionOp.In:
                return InList(ref reader, condition.List) ? ConditionResult.True : ConditionResult.False;
            case ConditionOp.NotIn:
                return InList(ref reader, condition.List) ? ConditionResult.False : ConditionResult.True;
            case ConditionOp.Lt or ConditionOp.Lte or ConditionOp.Gt or ConditionOp.Gte:
                return CompareNumber(ref reader, condition.Op, condition.Operand);
            case ConditionOp.Regex:
                return reader.TokenType == JsonTokenType.String ? MatchRegex(ref reader, condition) : ConditionResult.TypeMismatch;
            case ConditionOp.Contains:
                return Contains(ref reader, condition.Operand);
            default:
                return ConditionResult.TypeMismatch;
        }
    }

    private static bool InList(ref Utf8JsonReader reader, Operand[] list)
    {
        foreach (var operand in list)
        {
            if (Equal(ref reader, operand))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>JSON equality of a scalar token and an operand: same type and same value (numbers compared numerically).</summary>
    private static bool Equal(ref Utf8JsonReader reader, in Operand operand) => operand.Kind switch
    {
        OperandKind.String => reader.TokenType == JsonTokenType.String && reader.ValueTextEquals(operand.Utf8),
        OperandKind.Number => reader.TokenType == JsonTokenType.Number && CompareTo(ref reader, operand) == 0,
        OperandKind.True => reader.TokenType == JsonTokenType.True,
        OperandKind.False => reader.TokenType == JsonTokenType.False,
        OperandKind.Null => reader.TokenType == JsonTokenType.Null,
        _ => false,
    };

    private static ConditionResult CompareNumber(ref Utf8JsonReader reader, ConditionOp op, in Operand operand)
    {
        if (reader.TokenType != JsonTokenType.Number)
        {
            return ConditionResult.TypeMismatch;
        }
        var c = CompareTo(ref reader, operand);
        var holds = op switch
        {
            ConditionOp.Lt => c < 0,
            ConditionOp.Lte => c <= 0,
            ConditionOp.Gt => c > 0,
            _ => c >= 0,
        };
        return holds ? ConditionResult.True : ConditionResult.False;
    }

    /// <summary>Compares the number under the reader with the operand: exactly when both fit a decimal, else as doubles.</summary>
    private static int CompareTo(ref Utf8JsonReader reader, in Operand operand)
    {
        if (operand.Exact && reader.TryGetDecimal(out var value))
        {
            return value.CompareTo(operand.Number);
        }
        return reader.TryGetDouble(out var d) ? d.CompareTo(operand.Approx) : 1;
    }

    private static ConditionResult Contains(ref Utf8JsonReader reader, in Operand operand)
    {
        if (reader.TokenType == JsonTokenType.StartArray)
        {
            var depth = reader.CurrentDepth;
            while (reader.Read() && !(reader.TokenType == JsonTokenType.EndArray && reader.CurrentDepth == depth))
            {
                if (Equal(ref reader, operand))
                {
                    return ConditionResult.True;
                }
                reader.Skip();
            }
            return ConditionResult.False;
        }
        if (reader.TokenType != JsonTokenType.String || operand.Kind != OperandKind.String)
        {
            return ConditionResult.TypeMismatch;
        }
        if (!reader.ValueIsEscaped && !reader.HasValueSequence)
        {
            return reader.ValueSpan.IndexOf(operand.Utf8) >= 0 ? ConditionResult.True : ConditionResult.False;
        }
        return ContainsSlow(ref reader, operand.Utf8!);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static ConditionResult ContainsSlow(ref Utf8JsonReader reader, byte[] needle)
    {
        var length = reader.HasValueSequence ? checked((int)reader.ValueSequence.Length) : reader.ValueSpan.Length;
        var rented = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            var written = reader.CopyString(rented);
            return rented.AsSpan(0, written).IndexOf(needle) >= 0 ? ConditionResult.True : ConditionResult.False;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    private static ConditionResult MatchRegex(ref Utf8JsonReader reader, ConditionModel condition)
    {
        var length = reader.HasValueSequence ? checked((int)reader.ValueSequence.Length) : reader.ValueSpan.Length;
        char[]? rented = null;
        Span<char> buffer = length <= StackChars ? stackalloc char[StackChars] : (rented = ArrayPool<char>.Shared.Rent(length));
        try
        {
            var written = reader.CopyString(buffer);
            return condition.Regex!.IsMatch(buffer[..written]) ? ConditionResult.True : ConditionResult.False;
        }
        catch (System.Text.RegularExpressions.RegexMatchTimeoutException)
        {
            return ConditionResult.TypeMismatch;
        }
        finally
        {
            if (rented is not null)
            {
                ArrayPool<char>.Shared.Return(rented);
            }
        }
    }

    /// <summary>Reads the amount a limit spends. False when it is missing, not a number, or negative.</summary>
    public static bool TryReadAmount(Utf8JsonReader reader, byte[][] segments, long max, out long amount)
    {
        amount = 0;
        if (!TryFind(ref reader, segments) || reader.TokenType != JsonTokenType.Number)
        {
            return false;
        }
        if (reader.TryGetDecimal(out var value))
        {
            if (value < 0)
            {
                return false;
            }
            var ceiling = decimal.Ceiling(value);
            amount = ceiling > max ? max + 1 : (long)ceiling;
            return true;
        }
        if (reader.TryGetDouble(out var d) && d >= 0)
        {
            amount = max + 1; // beyond decimal's range: larger than any max
            return true;
        }
        return false;
    }
}
