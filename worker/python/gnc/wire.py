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
    # Widened to 64 bits so that adding the rounding bias cannot wrap around.
    wide = bits.astype(np.uint64)
    rounded = ((wide + 0x7FFF + ((wide >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def from_bfloat16_bits(bits: np.ndarray, out: np.ndarray) -> None:
    """Writes the float32 values of 16-bit bfloat16 patterns into out (exact)."""
    out.view(np.uint32)[...] = bits.astype(np.uint32) << 16


def encode(values: np.ndarray, dtype: int, chunk: gnc_pb2.Chunk) -> None:
    """Sets chunk.dtype and chunk.data to values in the given gnc.v1.DType.

    REQUIRES: values is a contiguous float32 vector.
    """
    if dtype == gnc_pb2.BFLOAT16:
        chunk.dtype = gnc_pb2.BFLOAT16
        chunk.data = to_bfloat16_bits(values).astype(_BFLOAT16_BITS, copy=False).tobytes()
    else:
        chunk.dtype = gnc_pb2.FLOAT32
        chunk.data = values.astype(_FLOAT32, copy=False).tobytes()


def element_count(chunk: gnc_pb2.Chunk) -> int:
    """Elements carried by chunk; ValueError for an unknown dtype or a payload that is
    not a whole number of elements."""
    size = element_size(chunk.dtype)
    if len(chunk.data) % size:
        raise ValueError(
            f"chunk payload of {len(chunk.data)} bytes is not a whole number of "
            f"{size}-byte elements")
    return len(chunk.data) // size


def decode(chunk: gnc_pb2.Chunk, out: np.ndarray) -> None:
    """Writes the chunk's elements into out as float32.

    REQUIRES: out is a float32 view with exactly element_count(chunk) elements.
    Raises ValueError otherwise.
    """
    count = element_count(chunk)
    if count != out.size:
        raise ValueError(f"chunk has {count} elements, expected {out.size}")
    if chunk.dtype == gnc_pb2.BFLOAT16:
        from_bfloat16_bits(np.frombuffer(chunk.data, dtype=_BFLOAT16_BITS), out)
    else:
        out[...] = np.frombuffer(chunk.data, dtype=_FLOAT32)
