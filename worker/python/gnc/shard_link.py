"""One shard as the Python client sees it: its channel, its place in the job, and its
Train stream with the protocol state of that stream (which message is due next, the
evaluation point being received). Used by gnc.client only.

Thread-compatible: the client's one driving thread calls everything here; each
stream's reader thread only appends to the stream's `items` under the client's
condition.
"""

from __future__ import annotations

import collections
import enum
import queue
import threading
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import grpc
import numpy as np

from gnc import wire
from gnc.errors import GncError, LateGradient, status_code
from gnc.layout import ShardRange
from gnc.v1 import gnc_pb2


class PointTag(NamedTuple):
    """Which evaluation point a shard sent: job, generation, step."""

    job_id: int = 0
    generation: int = 0
    step: int = -1


class StreamState(enum.Enum):
    AWAIT_EVAL = 1  # an evaluation point is on its way (after Hello, OK or ABORTED ack)
    HAVE_EVAL = 2  # evaluation point received; a gradient is due
    AWAIT_ACK = 3  # gradient sent; the shard's verdict is on its way


@dataclass
class StreamEnd:
    """The last item of a Train stream: why it ended (None: the server closed it)."""

    error: Optional[BaseException]


class TrainStream:
    """One Train stream: serialized requests go through a queue that gRPC's sending
    thread drains; a reader thread appends every response, then a StreamEnd, to
    `items` and wakes whoever waits on `cond`."""

    def __init__(self, train: grpc.StreamStreamMultiCallable, metadata, hello: bytes,
                 cond: threading.Condition, name: str):
        self.items: collections.deque = collections.deque()
        self._cond = cond
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._requests.put(hello)
        self._call = train(iter(self._requests.get, None), metadata=metadata)
        self._reader = threading.Thread(target=self._read, name=name, daemon=True)
        self._reader.start()

    def send(self, request: bytes) -> None:
        """Queues one serialized TrainRequest."""
        self._requests.put(request)

    def close(self) -> None:
        """Ends the stream; the sending and reading threads then finish on their own."""
        self._requests.put(None)
        self._call.cancel()

    def _read(self) -> None:
        error: Optional[BaseException] = None
        try:
            for response in self._call:
                self._deliver(response)
        except BaseException as e:  # grpc.RpcError, or a failure to parse a message
            error = e
        self._deliver(StreamEnd(error))

    def _deliver(self, item) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()


def named(shard: "ShardLink", error: BaseException) -> BaseException:
    """error as a GncError naming shard (anything else is returned unchanged)."""
    if isinstance(error, GncError):
        if error.shard is not None:
            return error
        return type(error)(error.code, error.message, shard.index, shard.address)
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return GncError(error.code(), error.details() or "", shard.index, shard.address)
    if isinstance(error, ValueError):
        return GncError(grpc.StatusCode.DATA_LOSS, str(error), shard.index, shard.address)
    return error


@dataclass(eq=False)
class ShardLink:
    index: int
    address: str
    channel: grpc.Channel
    stub: object
    train: grpc.StreamStreamMultiCallable
    range: ShardRange = ShardRange(0, 0)
    needs_parameters: bool = False
    job: gnc_pb2.JobState = field(default_factory=gnc_pb2.JobState)  # as of the last Join
    stream: Optional[TrainStream] = None
    state: StreamState = StreamState.AWAIT_EVAL
    tag: PointTag = PointTag()  # of the evaluation point last received
    point_dtype: int = gnc_pb2.FLOAT32  # the encoding that point came in
    verdict: Optional[GncError] = None  # the refusal of the last gradient, if any
    # A point received while a push recovered, for the next receive_eval_point.
    pending: Optional[np.ndarray] = None
    # The evaluation point being received: its tag, next offset, and where it goes
    # (out[base:base + range.size]).
    eval_tag: PointTag = PointTag()
    eval_next: int = 0
    eval_out: Optional[np.ndarray] = None
    eval_base: int = 0

    def open_stream(self, metadata, hello: bytes, cond: threading.Condition) -> None:
        """Opens a new Train stream (the shard answers the Hello with its current point)."""
        self.stream = TrainStream(self.train, metadata, hello, cond, f"gnc-train-{self.index}")
        self.state = StreamState.AWAIT_EVAL
        self.eval_next = 0

    def close_stream(self) -> None:
        """Ends the Train stream, if any, and forgets every message due on it."""
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        self.state = StreamState.AWAIT_EVAL
        self.eval_next = 0
        self.eval_out = None
        self.pending = None

    def receive_into(self, out: np.ndarray, base: int) -> None:
        """Where the next evaluation point's elements go: out[base:base + range.size]."""
        self.eval_out, self.eval_base = out, base

    def send_gradient(self, grad: np.ndarray, num_samples: int, dtype: int) -> None:
        """Queues grad (the full flat vector) for the point last received, in chunks."""
        step, generation = self.tag.step, self.tag.generation
        size = self.range.size
        for offset in range(0, size, wire.CHUNK_ELEMENTS):
            count = min(wire.CHUNK_ELEMENTS, size - offset)
            begin = self.range.begin + offset
            self.stream.send(wire.gradient_request(step, generation, num_samples, offset,
                                                   offset + count == size,
                                                   grad[begin:begin + count], dtype))
        self.state = StreamState.AWAIT_ACK
        self.verdict = None

    def handle(self, response: gnc_pb2.TrainResponse) -> bool:
        """Applies one message of the stream. Returns True when it completed an
        evaluation point. Raises GncError (DATA_LOSS) for a message the protocol does
        not allow in the current state."""
        kind = response.WhichOneof("kind")
        if kind == "ack" and self.state == StreamState.AWAIT_ACK:
            ack = response.ack
            code = status_code(ack.code)
            if code in (grpc.StatusCode.OK, grpc.StatusCode.ABORTED):
                self.state = StreamState.AWAIT_EVAL
            else:
                self.state = StreamState.HAVE_EVAL  # refused: the gradient may be sent again
            if code == grpc.StatusCode.ABORTED:
                self.verdict = named(self, LateGradient(code, ack.message))
            elif code != grpc.StatusCode.OK:
                self.verdict = named(self, GncError(code, ack.message))
            return False
        if kind == "eval_point" and self.state == StreamState.AWAIT_EVAL:
            return self._take_eval_chunk(response.eval_point)
        raise GncError(grpc.StatusCode.DATA_LOSS,
                       f"unexpected {kind} message while in state {self.state.name}")

    def _take_eval_chunk(self, point) -> bool:
        chunk = point.chunk
        tag = PointTag(point.job_id, point.generation, point.step)
        if chunk.offset == 0:  # a (re)start: the server moved on to a newer point
            self.eval_tag = tag
            self.eval_next = 0
        if tag != self.eval_tag or chunk.offset != self.eval_next:
            raise GncError(grpc.StatusCode.DATA_LOSS,
                           f"evaluation point out of order at offset {chunk.offset}")
        try:
            payload = wire.Payload(chunk)
        except ValueError as e:
            raise GncError(grpc.StatusCode.DATA_LOSS, str(e)) from None
        size = self.range.size
        if self.eval_next + payload.count > size:
            raise GncError(grpc.StatusCode.DATA_LOSS, "evaluation point exceeds the shard")
        begin = self.eval_base + self.eval_next
        payload.decode(self.eval_out[begin:begin + payload.count])
        self.eval_next += payload.count
        if not chunk.last:
            return False
        if self.eval_next != size:
            raise GncError(grpc.StatusCode.DATA_LOSS, "evaluation point ended early")
        self.tag = self.eval_tag
        self.point_dtype = payload.dtype
        self.eval_next = 0
        self.state = StreamState.HAVE_EVAL
        return True
