"""The Python client's pieces without a network: the bfloat16 codec against hand-made
bit patterns and an independent rounding, chunk decoding errors, the shard map and
layout checks."""

from __future__ import annotations

import unittest

import gnc_testlib

_, UNITTEST_ARGV = gnc_testlib.setup(["numpy", "grpc", "google.protobuf", "gnc"])

import numpy as np  # noqa: E402  (after the skip check)

import gnc  # noqa: E402
from gnc import wire  # noqa: E402
from gnc.v1 import gnc_pb2  # noqa: E402


def bits(values) -> np.ndarray:
    return np.array(values, np.uint32).view(np.float32)


class Bfloat16Test(unittest.TestCase):

    def test_hand_made_cases(self) -> None:
        cases = {
            0x3F800000: 0x3F80,  # 1
            0x3F808000: 0x3F80,  # 1 + 2^-8: halfway, to the even 1
            0x3F818000: 0x3F82,  # 1 + 3 * 2^-8: halfway, to the even 1 + 2^-6
            0x3F808001: 0x3F81,  # just above halfway: up
            0x3F807FFF: 0x3F80,  # just below halfway: down
            0xBF818000: 0xBF82,  # negative ties mirror the positive ones
            0x80000000: 0x8000,  # -0 keeps its sign
            0x00008000: 0x0000,  # subnormal tie, to even
            0x00018000: 0x0002,
            0x7F7F7FFF: 0x7F7F,  # largest values: below halfway stays finite
            0x7F7F8000: 0x7F80,  # halfway from an odd pattern overflows to infinity
            0x7F7FFFFF: 0x7F80,
            0x7F800000: 0x7F80,  # infinities
            0xFF800000: 0xFF80,
            0x7FC00000: 0x7FC0,  # quiet NaN
            0x7F800001: 0x7FC0,  # signalling NaN made quiet, not rounded to infinity
            0xFF800001: 0xFFC0,  # with its sign
            0x7FFFFFFF: 0x7FFF,  # a NaN whose rounding would carry stays a NaN
        }
        got = wire.to_bfloat16_bits(bits(list(cases)))
        for (x, want), g in zip(cases.items(), got):
            self.assertEqual(int(g), want, f"{x:#010x} -> {int(g):#06x}, want {want:#06x}")

    def test_against_independent_rounding(self) -> None:
        rng = np.random.default_rng(3)
        # Every exponent from subnormals to 2^100, random mantissas, both signs.
        x = (rng.standard_normal(200_000) * 2.0 ** rng.integers(-140, 100, 200_000)).astype(
            np.float32)
        x[:1000] = (np.float32(1) + np.arange(1000, dtype=np.float32) * 2**-8)  # ties
        got = wire.to_bfloat16_bits(x).astype(np.uint32) << 16
        want = gnc_testlib.bf16_reference(x).view(np.uint32)
        np.testing.assert_array_equal(got, want)

    def test_chunk_round_trip(self) -> None:
        x = np.float32([1.5, -2.25, 2.0**127, -0.0, np.inf])  # all exact in bfloat16
        for dtype in (gnc_pb2.FLOAT32, gnc_pb2.BFLOAT16):
            chunk = gnc_pb2.Chunk()
            wire.encode(x, dtype, chunk)
            self.assertEqual(chunk.dtype, dtype)
            self.assertEqual(len(chunk.data), x.size * wire.element_size(dtype))
            out = np.empty_like(x)
            wire.Payload(chunk).decode(out)
            np.testing.assert_array_equal(out.view(np.uint32), x.view(np.uint32))

    def test_float32_payload_is_little_endian_binary32(self) -> None:
        chunk = gnc_pb2.Chunk()
        wire.encode(np.float32([1.0, -2.0]), gnc_pb2.FLOAT32, chunk)
        self.assertEqual(chunk.data, bytes.fromhex("0000803f000000c0"))
        wire.encode(np.float32([1.0, -2.0]), gnc_pb2.BFLOAT16, chunk)
        self.assertEqual(chunk.data, bytes.fromhex("803f00c0"))

    def test_gradient_request_is_one_ordinary_message(self) -> None:
        x = np.arange(1000, dtype=np.float32) / 3
        for dtype in (gnc_pb2.FLOAT32, gnc_pb2.BFLOAT16):
            for offset, last, generation in ((1 << 18, True, 3), (0, False, 0)):
                want = gnc_pb2.TrainRequest()
                want.gradient.step, want.gradient.num_samples = 300, 64
                want.gradient.generation = generation
                want.gradient.chunk.offset, want.gradient.chunk.last = offset, last
                wire.encode(x, dtype, want.gradient.chunk)
                got = wire.gradient_request(300, generation, 64, offset, last, x, dtype)
                # The very bytes of the generated serializer: header and payload in
                # one chunk, fields in number order.
                self.assertEqual(got, want.SerializeToString(deterministic=True))
                self.assertEqual(gnc_pb2.TrainRequest.FromString(got), want)

    def test_hello_asks_for_the_wire_dtype(self) -> None:
        for dtype in (gnc_pb2.FLOAT32, gnc_pb2.BFLOAT16):
            hello = gnc_pb2.TrainRequest.FromString(wire.hello_request(5, dtype))
            self.assertEqual(hello.WhichOneof("kind"), "hello")
            self.assertEqual((hello.hello.rank, hello.hello.wire_dtype), (5, dtype))

    def test_bad_chunks(self) -> None:
        with self.assertRaisesRegex(ValueError, "whole number"):
            wire.Payload(gnc_pb2.Chunk(dtype=gnc_pb2.BFLOAT16, data=b"abc"))
        with self.assertRaisesRegex(ValueError, "unsupported dtype"):
            wire.Payload(gnc_pb2.Chunk(dtype=7, data=b"abcd"))
        with self.assertRaisesRegex(ValueError, "expected 2"):
            wire.Payload(gnc_pb2.Chunk(dtype=gnc_pb2.FLOAT32, data=b"abcd")).decode(
                np.empty(2, np.float32))
        with self.assertRaisesRegex(ValueError, "float16"):
            wire.dtype_value("float16")


class LayoutTest(unittest.TestCase):

    def test_shard_ranges(self) -> None:
        self.assertEqual([gnc.shard_range(10, 3, s) for s in range(3)],
                         [gnc.ShardRange(0, 4), gnc.ShardRange(4, 7), gnc.ShardRange(7, 10)])
        self.assertEqual(gnc.shard_range(2, 3, 2), gnc.ShardRange(2, 2))
        for n in (0, 1, 7, 1000003):
            for shards in (1, 2, 3, 8):
                ranges = [gnc.shard_range(n, shards, s) for s in range(shards)]
                self.assertEqual(ranges[0].begin, 0)
                self.assertEqual(ranges[-1].end, n)
                for a, b in zip(ranges, ranges[1:]):
                    self.assertEqual(a.end, b.begin)
                self.assertLessEqual(max(r.size for r in ranges) - min(r.size for r in ranges), 1)

    def test_layout(self) -> None:
        layout = gnc.Layout([("w", (3, 4)), ("b", (3,)), ("s", ())])
        self.assertEqual(layout.num_elements, 16)
        self.assertEqual([layout.offset(i) for i in range(3)], [0, 12, 15])
        proto = layout.to_proto()
        self.assertEqual([(t.name, list(t.shape)) for t in proto.tensors],
                         [("w", [3, 4]), ("b", [3]), ("s", [])])
        for bad in ([], [("", (1,))], [("w", (1,)), ("w", (2,))], [("w", (0, 3))]):
            with self.assertRaises(ValueError):
                gnc.Layout(bad)


if __name__ == "__main__":
    gnc_testlib.main(UNITTEST_ARGV)
