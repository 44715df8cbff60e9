#!/usr/bin/env python3
"""Writes the fuzzers' seed inputs: tests/fuzz/corpus/{wire,shard}/seed-*.

    tests/fuzz/make_corpus.py [OUT_DIR]   (default: tests/fuzz/corpus)

Seeds only give the fuzzers a running start: valid messages of every kind for
fuzz_wire.cc, and for fuzz_shard.cc whole jobs (joins, w0, steps in each mode, a
straggler, a rewind, a leave, bfloat16 streams, a raw wire gradient). The shard seeds
follow the byte layout fuzz_shard.cc reads (Options, FuzzedLayout, then one operation
per Harness::Step); keep them in step when that changes. The regress-* files next to
the seeds are inputs that once found a bug: they are kept by hand, not written here.
"""
import os
import struct
import sys

# ---- protobuf wire encoding (enough for gnc.v1) --------------------------------------


def varint(v):
    v &= (1 << 64) - 1
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def field_varint(number, v):
    return varint(number << 3) + varint(v)


def field_bytes(number, data):
    return varint(number << 3 | 2) + varint(len(data)) + data


def field_fixed64(number, v):
    return varint(number << 3 | 1) + struct.pack("<Q", v)


FLOAT32, BFLOAT16 = 1, 2


def f32(values):
    return b"".join(struct.pack("<f", v) for v in values)


def bf16(values):
    return b"".join(struct.pack("<f", v)[2:] for v in values)


def chunk(offset, dtype, data, last):
    return (field_varint(1, offset) + field_varint(2, dtype) + field_bytes(3, data) +
            field_varint(4, 1 if last else 0))


def hello(rank, dtype):
    return field_bytes(1, field_varint(1, rank) + field_varint(2, dtype))


def gradient(step, samples, generation, c):
    return field_bytes(2, field_varint(1, step) + field_varint(2, samples) +
                       field_bytes(3, c) + field_varint(4, generation))


def point(step, job_id, generation, c):
    return (field_varint(1, step) + field_bytes(2, c) + field_fixed64(3, job_id) +
            field_varint(4, generation))


def ack(step, code, message):
    return field_bytes(2, field_varint(1, step) + field_varint(2, code) +
                       field_bytes(3, message.encode()))


def wire_seeds():
    """fuzz_wire.cc: byte 0 = what to parse, byte 1 = slice seed, then the message."""
    TRAIN_REQUEST, TRAIN_RESPONSE, PULL_RESPONSE, CODEC = 0, 1, 2, 3
    g = [0.5, -1.0, 2.0]
    return {
        "hello": (TRAIN_REQUEST, 0, hello(1, BFLOAT16)),
        "gradient-f32": (TRAIN_REQUEST, 0, gradient(5, 4, 1, chunk(0, FLOAT32, f32(g), True))),
        "gradient-f32-sliced": (TRAIN_REQUEST, 3,
                                gradient(5, 4, 1, chunk(3, FLOAT32, f32(g), False))),
        "gradient-bf16-sliced": (TRAIN_REQUEST, 7,
                                 gradient(2, 1, 0, chunk(0, BFLOAT16, bf16(g + g), True))),
        # The payload in a second message that protobuf merges into the first.
        "gradient-merged": (TRAIN_REQUEST, 5,
                            gradient(1, 2, 0, chunk(0, FLOAT32, b"", True)) +
                            gradient(0, 0, 0, field_bytes(3, f32(g)))),
        "hello-then-gradient": (TRAIN_REQUEST, 0,
                                hello(0, FLOAT32) + gradient(0, 1, 0, chunk(0, FLOAT32, f32(g), True))),
        "unknown-field": (TRAIN_REQUEST, 2, gradient(1, 1, 0, chunk(0, FLOAT32, f32(g), True)) +
                          field_varint(127, 5)),
        "eval-point": (TRAIN_RESPONSE, 0,
                       field_bytes(1, point(3, 0x600D, 1, chunk(0, FLOAT32, f32(g), True)))),
        "eval-point-bf16-sliced": (TRAIN_RESPONSE, 9,
                                   field_bytes(1, point(3, 0x600D, 1, chunk(4, BFLOAT16, bf16(g), False)))),
        "ack": (TRAIN_RESPONSE, 0, ack(7, 10, "step 7 has completed without this gradient")),
        "pull": (PULL_RESPONSE, 0, point(9, 0x600D, 2, chunk(0, FLOAT32, f32(g), True))),
        "pull-sliced": (PULL_RESPONSE, 4, point(9, 0x600D, 2, chunk(8, BFLOAT16, bf16(g), True))),
        "codec-f32": (CODEC, 0, chunk(0, FLOAT32, f32(g), True)),
        "codec-bf16": (CODEC, 0, chunk(0, BFLOAT16, bf16(g), True)),
        "codec-unspecified": (CODEC, 0, field_bytes(3, f32(g))),
        "codec-odd-size": (CODEC, 0, chunk(0, FLOAT32, f32(g)[:-1], True)),
        "codec-unknown-dtype": (CODEC, 0, chunk(0, 7, f32(g), True)),
    }


# ---- fuzz_shard.cc's input: settings, layout, operations -----------------------------


class Job:
    """Bytes for fuzz_shard.cc, tracking what it needs to lay them out (the shard's
    size d, the workers K)."""

    def __init__(self, workers, mode, shards=1, index=0, min_workers=0, momentum=2,
                 weight_decay=0, clip=0, nesterov=0, lr=0, warmup=0, decay=0):
        modes = {"none": 0, "gnc": 1, "isotropic": 2}
        a = (workers - 1) + 3 * modes[mode] + 9 * nesterov
        b = (shards - 1) + 3 * index + 9 * min_workers
        c = momentum + 3 * weight_decay + 6 * clip
        d = lr + 3 * warmup + 9 * decay
        self.k = workers
        self.out = bytearray([a, b, c, d])
        # Layout: two tensors, t0 [4] and t1 [2]: 6 elements.
        self.out += bytes([1, 8, 3, 10, 1])
        n = 6
        self.d = n // shards + (1 if index < n % shards else 0)

    def values(self, n, seed):
        # Kind 0: int8 / 16, one byte each.
        return bytes(((seed * 37 + 11 * i) % 97) - 48 & 0xFF for i in range(n))

    def bootstrap(self, dtypes=None):
        self.out += bytes([15, 1]) + self.values(self.d, 1)
        for r in range(self.k):
            self.out.append(1 if dtypes and dtypes[r] == "bf16" else 0)
        return self

    def whole(self, rank, chunk=2, samples=4, wire=False, seed=0):
        chunk = max(1, min(chunk, self.d))
        self.out += bytes([9, rank, chunk - 1, samples - 1, 1, 1 if wire else 0])
        for off in range(0, self.d, chunk):
            n = min(chunk, self.d - off)
            if off > 0:
                self.out.append((samples + off) % 10)  # ignored: only offset 0 counts
            self.out += self.values(n, seed + off) + bytes([off % 5])
        return self

    def step(self, ranks=None, **kw):
        for r in (range(self.k) if ranks is None else ranks):
            self.whole(r, seed=r + len(self.out), **kw)
        return self

    def late_chunk(self, rank):
        # Chunk op: rank, session current, generation current, step current - 1,
        # 2 samples, offset expected, all d elements, float32, last right, kind 0,
        # one piece, direct, values, whole elements.
        self.out += bytes([5, rank + 1, 0, 0, 6, 2, 0, self.d, 0, 0, 0, 0, 0])
        self.out += self.values(self.d, 3) + bytes([1])
        return self

    def nan_chunk(self, rank):
        # As late_chunk but for the current step, kind 1 (raw bits: a NaN).
        self.out += bytes([5, rank + 1, 0, 0, 0, 2, 0, self.d, 0, 0, 1, 0, 1])
        self.out += struct.pack("<f", float("nan")) * self.d + bytes([1])
        return self

    def clock(self, seconds):
        self.out += bytes([14, seconds, 14, 0])
        return self

    def leave(self, rank):
        self.out += bytes([12, rank + 1])
        return self

    def close(self, rank):
        self.out += bytes([3, rank, 0])
        return self

    def open(self, rank, dtype=0):
        self.out += bytes([2, rank + 1, dtype])
        return self

    def rewind(self):
        self.out += bytes([13, 1, 1, 2, 0])
        return self

    def raw_gradient(self, rank, step, generation):
        message = gradient(step, 3, generation, chunk(0, FLOAT32, f32([0.25] * self.d), True))
        self.out += bytes([11, rank, len(message)]) + message
        return self


def shard_seeds():
    return {
        "gnc-three-steps": Job(3, "gnc").bootstrap().step().step(chunk=1, wire=True).step(chunk=6),
        "none-two-shards-nesterov-clip": Job(2, "none", shards=2, index=1, nesterov=1, clip=1,
                                             weight_decay=1).bootstrap().step().nan_chunk(1)
                                         .step(wire=True).step(),
        "isotropic-straggler": Job(3, "isotropic", min_workers=2).bootstrap().step()
                               .step(ranks=[0, 1]).clock(11).late_chunk(2).step(),
        "rewind": Job(2, "gnc", warmup=1, decay=1).bootstrap().step().step(ranks=[0]).rewind()
                  .step().step(),
        "leave-and-close": Job(3, "gnc", momentum=0).bootstrap().step().leave(2).close(1)
                           .open(1).step(ranks=[0, 1]).step(ranks=[0, 1]),
        "bf16-streams": Job(2, "gnc", decay=2).bootstrap(["bf16", "f32"]).step().step(chunk=3)
                        .step(wire=True),
        "raw-wire": Job(1, "none", lr=1).bootstrap().raw_gradient(0, 0, 0).step()
                    .raw_gradient(0, 1, 0),
    }


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus")
    for name, (kind, seed, message) in wire_seeds().items():
        write(os.path.join(root, "wire", "seed-" + name), bytes([kind, seed]) + message)
    for name, job in shard_seeds().items():
        write(os.path.join(root, "shard", "seed-" + name), bytes(job.out))


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


if __name__ == "__main__":
    main()
