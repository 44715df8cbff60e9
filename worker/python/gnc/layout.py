"""Model layout and shard map, as in common/layout.h: how the flat float32 parameter
vector is named and split across S shards. Every process derives the same map."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from gnc.v1 import gnc_pb2


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor, flattened row-major into the parameter vector."""

    name: str
    shape: tuple[int, ...]  # () = scalar

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ShardRange:
    """The global element range [begin, end) owned by one shard."""

    begin: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.begin


class Layout:
    """The ordered tensors of a model. Immutable.

    Layout([("w1", (256, 784)), ("b1", (256,)), ...]) or Layout of TensorSpecs.
    Raises ValueError when there are no tensors, a name is empty or repeated, or a
    dimension is below 1 (the checks the shards make, so they fail here first).
    """

    def __init__(self, tensors: Iterable[TensorSpec | tuple[str, Sequence[int]]]):
        specs = []
        for t in tensors:
            spec = t if isinstance(t, TensorSpec) else TensorSpec(t[0], tuple(int(d) for d in t[1]))
            specs.append(spec)
        if not specs:
            raise ValueError("model layout has no tensors")
        names = set()
        offsets = []
        offset = 0
        for spec in specs:
            if not spec.name:
                raise ValueError("a tensor of the model layout has no name")
            if spec.name in names:
                raise ValueError(f"tensor {spec.name!r} appears twice in the model layout")
            if any(d < 1 for d in spec.shape):
                raise ValueError(f"tensor {spec.name!r} has a dimension below 1: {spec.shape}")
            names.add(spec.name)
            offsets.append(offset)
            offset += spec.num_elements
        self._tensors = tuple(specs)
        self._offsets = tuple(offsets)
        self._num_elements = offset

    @property
    def tensors(self) -> tuple[TensorSpec, ...]:
        return self._tensors

    @property
    def num_elements(self) -> int:
        """Elements of the flat parameter vector."""
        return self._num_elements

    def offset(self, i: int) -> int:
        """Offset of tensor i in the flat vector."""
        return self._offsets[i]

    def to_proto(self) -> gnc_pb2.ModelLayout:
        proto = gnc_pb2.ModelLayout()
        for spec in self._tensors:
            proto.tensors.add(name=spec.name, shape=list(spec.shape))
        return proto

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and self._tensors == other._tensors

    def __hash__(self) -> int:
        return hash(self._tensors)

    def __repr__(self) -> str:
        return f"Layout({[(t.name, t.shape) for t in self._tensors]!r})"


def shard_range(num_elements: int, num_shards: int, shard_index: int) -> ShardRange:
    """Contiguous, element-balanced split of num_elements into num_shards ranges; the
    first num_elements % num_shards shards get one extra element.

    REQUIRES: num_shards >= 1, 0 <= shard_index < num_shards, num_elements >= 0.
    """
    base, extra = divmod(num_elements, num_shards)
    begin = shard_index * base + min(shard_index, extra)
    return ShardRange(begin, begin + base + (1 if shard_index < extra else 0))
