using Sidecar.JsonRpc;
using static Sidecar.Tests.JsonRpc.TestSupport;

namespace Sidecar.Tests.JsonRpc;

public class Utf8ValidationTests
{
    [Fact]
    public void Sequence_validation_agrees_with_span_validation_at_every_split()
    {
        Random random = new(1234);
        byte[][] pieces =
        [
            [0x41], [0xC3, 0xA9], [0xE2, 0x82, 0xAC], [0xF0, 0x9F, 0x98, 0x80], [0xEF, 0xBF, 0xBF], [0xF4, 0x8F, 0xBF, 0xBF],
            [0x80], [0xC0, 0x80], [0xE0, 0x80, 0x80], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xFF], [0xC3], [0xE2, 0x82], [0xF0, 0x9F, 0x98],
        ];
        for (int round = 0; round < 3000; round++)
        {
            List<byte> bytes = [];
            int count = random.Next(1, 6);
            for (int i = 0; i < count; i++)
            {
                // Mostly valid pieces, sometimes an invalid one.
                bytes.AddRange(pieces[random.Next(random.Next(4) == 0 ? pieces.Length : 6)]);
            }

            byte[] data = [.. bytes];
            bool expected = System.Text.Unicode.Utf8.IsValid(data);
            long expectedOffset = Utf8Validation.FindFirstInvalid(data);
            Assert.Equal(expected, expectedOffset < 0);
            for (int a = 0; a <= data.Length; a++)
            {
                int b = random.Next(a, data.Length + 1);
                Assert.Equal(expected, Utf8Validation.IsValid(Split(data, a, b)));
                Assert.Equal(expectedOffset, Utf8Validation.FindFirstInvalid(Split(data, a, b)));
            }

            Assert.Equal(expected, Utf8Validation.IsValid(Chunks(data, 1)));
        }
    }

    [Fact]
    public void First_invalid_offset_is_found_past_the_scratch_buffer()
    {
        byte[] data = [.. Utf8(new string('é', 3000)), 0xFF];
        Assert.Equal(6000, Utf8Validation.FindFirstInvalid(data));
        Assert.Equal(-1, Utf8Validation.FindFirstInvalid(data.AsSpan(0, 6000)));
    }
}
