"""Wire codec of the Python client: the one place where tensor chunks are encoded
and decoded (the Python counterpart of common/codec.cc).

Chunks carry little-endian float32 or bfloat16 ("the upper 16 bits of binary32").
Encoding to bfloat16 rounds to nearest, ties to even, and keeps NaNs quiet, exactly as
the C++ codec does, so a Python and a C++ worker put the same bytes on the wire.
"""

from __future__ import annotations

import numpy as np

from gnc.v1 import gnc_pb2

#: Elements per chunk (1 MiB of float32), as kDefaultChunkElements in the C++ codec.
CHUNK_ELEMENTS = 1 << 18

#: Receive and send limit for gRPC channels: a chunk plus headers, bounded
#: (kMaxMessageBytes in the C++ codec).
MAX_MESSAGE_BYTES = 8 << 20

#: Wire dtype names accepted by the client, and their proto enum values.
DTYPES = {"float32": gnc_pb2.FLOAT32, "bfloat16": gnc_pb2.BFLOAT16}

_FLOAT32 = np.dtype("<f4")
_BFLOAT16_BITS = np.dtype("<u2")


def dtype_value(name: str) -> int:
    """Returns the gnc.v1.DType value of a wire dtype name.

    Raises ValueError for a name other than "float32" or "bfloat16".
    """
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"wire dtype must be one of {sorted(DTYPES)}, got {name!r}") from None


def element_size(dtype: int) -> int:
    """Bytes per element of a gnc.v1.DType value; ValueError for an unknown one."""
    if dtype in (gnc_pb2.DTYPE_UNSPECIFIED, gnc_pb2.FLOAT32):
        return 4
    if dtype == gnc_pb2.BFLOAT16:
        return 2
    raise ValueError(f"unsupported dtype {dtype}")


def to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """Rounds float32 values to bfloat16, returned as their 16-bit patterns.

    Round to nearest, ties to even; a NaN stays a (quiet) NaN with its sign; values
    beyond the largest bfloat16 become infinities. REQUIRES: values is float32.
    """
    bits = np.ascontiguousarray(values, dtype=_FLOAT32).view(np.uint32)
    # Adding the bias wraps around only for patterns >= 0xFFFF8000, all NaNs, which
    # are set below.
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def from_bfloat16_bits(bits: np.ndarray, out: np.ndarray) -> None:
    """Writes the float32 values of 16-bit bfloat16 patterns into out (exact)."""
    out.view(np.uint32)[...] = bits.astype(np.uint32) << 16


def _payload(values: np.ndarray, dtype: int) -> np.ndarray:
    """values as the little-endian elements of a chunk's data, without a copy for
    float32. REQUIRES: values is a contiguous float32 vector."""
    if dtype == gnc_pb2.BFLOAT16:
        return to_bfloat16_bits(values).astype(_BFLOAT16_BITS, copy=False)
    return values.astype(_FLOAT32, copy=False)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_GRADIENT = gnc_pb2.TrainRequest.DESCRIPTOR.fields_by_name["gradient"].number
_GRADIENT_CHUNK = gnc_pb2.TrainRequest.Gradient.DESCRIPTOR.fields_by_name["chunk"].number
_CHUNK_DATA = gnc_pb2.Chunk.DESCRIPTOR.fields_by_name["data"].number
_LENGTH_DELIMITED = 2


def _field_header(number: int, size: int) -> bytes:
    """The key and length of a length-delimited field of `size` bytes."""
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(size)


def gradient_request(step: int, generation: int, num_samples: int, offset: int, last: bool,
                     values: np.ndarray, dtype: int) -> bytes:
    """One serialized TrainRequest carrying a gradient chunk: values (a contiguous
    float32 vector) at `offset`, in the given gnc.v1.DType, for the point of `step`
    and `generation`.

    The bytes are those of the generated message's SerializeToString() (fields in
    number order, one chunk), but assembled around the payload: every field but the
    payload is serialized by the generated classes, the lengths are added by hand, and
    the payload is copied once, straight into the result.
    """
    chunk_dtype = gnc_pb2.BFLOAT16 if dtype == gnc_pb2.BFLOAT16 else gnc_pb2.FLOAT32
    payload = memoryview(_payload(values, dtype)).cast("B")
    # Chunk: offset (1), dtype (2) | data (3) | last (4).
    chunk_head = gnc_pb2.Chunk(offset=offset, dtype=chunk_dtype).SerializeToString()
    data_head = _field_header(_CHUNK_DATA, len(payload))
    chunk_tail = gnc_pb2.Chunk(last=last).SerializeToString()
    chunk_size = len(chunk_head) + len(data_head) + len(payload) + len(chunk_tail)
    # Gradient: step (1), num_samples (2) | chunk (3) | generation (4).
    gradient_head = gnc_pb2.TrainRequest.Gradient(
        step=step, num_samples=num_samples).SerializeToString() + \
        _field_header(_GRADIENT_CHUNK, chunk_size)
    gradient_tail = gnc_pb2.TrainRequest.Gradient(generation=generation).SerializeToString()
    gradient_size = len(gradient_head) + chunk_size + len(gradient_tail)
    return b"".join([_field_header(_GRADIENT, gradient_size), gradient_head, chunk_head,
                     data_head, payload, chunk_tail, gradient_tail])


def hello_request(rank: int, wire_dtype: int) -> bytes:
    """The serialized Hello that opens a Train stream: this worker's rank and the
    encoding it wants its evaluation points in."""
    return gnc_pb2.TrainRequest(hello=gnc_pb2.TrainRequest.Hello(
        rank=rank, wire_dtype=wire_dtype)).SerializeToString()


def dtype_name(dtype: int) -> str:
    """The wire dtype name of a gnc.v1.DType value (unset reads as float32)."""
    return "bfloat16" if dtype == gnc_pb2.BFLOAT16 else "float32"


def encode(values: np.ndarray, dtype: int, chunk: gnc_pb2.Chunk) -> None:
    """Sets chunk.dtype and chunk.data to values in the given gnc.v1.DType.

    REQUIRES: values is a contiguous float32 vector.
    """
    chunk.dtype = gnc_pb2.BFLOAT16 if dtype == gnc_pb2.BFLOAT16 else gnc_pb2.FLOAT32
    chunk.data = _payload(values, dtype).tobytes()


class Payload:
    """A received chunk's elements, read out of the message once (every read of a
    protobuf bytes field copies it)."""

    def __init__(self, chunk: gnc_pb2.Chunk):
        """Raises ValueError for an unknown dtype or a payload that is not a whole
        number of elements."""
        self.dtype = chunk.dtype
        self.data = chunk.data
        size = element_size(self.dtype)
        if len(self.data) % size:
            raise ValueError(f"chunk payload of {len(self.data)} bytes is not a whole "
                             f"number of {size}-byte elements")
        self.count = len(self.data) // size

    def decode(self, out: np.ndarray) -> None:
        """Writes the elements into out as float32.

        REQUIRES: out is a float32 view of exactly `count` elements (else ValueError).
        """
        if self.count != out.size:
            raise ValueError(f"chunk has {self.count} elements, expected {out.size}")
        if self.dtype == gnc_pb2.BFLOAT16:
            from_bfloat16_bits(np.frombuffer(self.data, dtype=_BFLOAT16_BITS), out)
        else:
            out[...] = np.frombuffer(self.data, dtype=_FLOAT32)
