"""The worker side of gnc in Python, with the semantics of the C++ client
(worker/client.h): join every shard, offer w0, then per step receive this worker's
evaluation point x_k and push the gradient taken there.

    with gnc.Client(servers, rank, num_workers, layout, local_batch_size=64) as client:
        client.offer(w0)                       # first offer per shard wins
        x = np.empty(layout.num_elements, np.float32)
        g = np.empty_like(x)
        while (step := client.receive_eval_point(x)) < total_steps:
            ... g = gradient of the loss at x on the next minibatch ...
            try:
                client.push_gradient(g, batch_size)
            except gnc.LateGradient:
                pass                           # the step completed without us: carry on
        client.pull(x)                         # the unperturbed w, for evaluation
    # leaving the block calls leave()

Every shard has one long-lived Train stream, driven concurrently: a push sends to
all shards at once and a receive takes chunks from whichever shard answers first.
Every status a shard returns is raised as a GncError naming the shard; no call waits
without an end (connect_timeout, step_timeout, rpc_timeout).

Thread-compatible: one thread drives a client.
"""

from __future__ import annotations

import collections
import concurrent.futures
import enum
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional, Sequence, TypeVar

import grpc
import numpy as np

from gnc import wire
from gnc.errors import GncError, LateGradient, status_code
from gnc.layout import Layout, ShardRange, TensorSpec, shard_range
from gnc.transport import Transport
from gnc.v1 import gnc_pb2

_MODES = {gnc_pb2.NONE: "none", gnc_pb2.GNC: "gnc", gnc_pb2.ISOTROPIC: "isotropic"}
# Longest wait of one Join attempt: a shard that is still starting is retried.
_JOIN_ATTEMPT_S = 5.0
_JOIN_RETRY_PAUSE_S = 0.2
_T = TypeVar("_T")


@dataclass
class JobInfo:
    """What the shards told this worker on join."""

    config_hash: int = 0
    layout_hash: int = 0
    total_steps: int = 0  # 0 = not fixed by the servers
    mode: str = ""  # none, gnc, isotropic
    ranges: list[ShardRange] = field(default_factory=list)  # per shard, global ranges


class _State(enum.Enum):
    AWAIT_EVAL = 1  # an evaluation point is on its way (after Hello, OK or ABORTED ack)
    HAVE_EVAL = 2  # evaluation point received; a gradient is due
    AWAIT_ACK = 3  # gradient sent; the shard's verdict is on its way


@dataclass
class _StreamEnd:
    """The last item of a Train stream: why it ended (None: the server closed it)."""

    error: Optional[BaseException]


class _TrainStream:
    """One Train stream: serialized requests go through a queue that gRPC's sending
    thread drains; a reader thread appends every response, then a _StreamEnd, to
    `items` and wakes whoever waits on the client's condition."""

    def __init__(self, train: grpc.StreamStreamMultiCallable, metadata, rank: int,
                 cond: threading.Condition, name: str):
        self.items: collections.deque = collections.deque()
        self._cond = cond
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        hello = gnc_pb2.TrainRequest(hello=gnc_pb2.TrainRequest.Hello(rank=rank))
        self._requests.put(hello.SerializeToString())
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
        self._deliver(_StreamEnd(error))

    def _deliver(self, item) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()


@dataclass(eq=False)
class _Shard:
    index: int
    address: str
    channel: grpc.Channel
    stub: object
    train: grpc.StreamStreamMultiCallable
    range: ShardRange = ShardRange(0, 0)
    needs_parameters: bool = False
    stream: Optional[_TrainStream] = None
    state: _State = _State.AWAIT_EVAL
    step: int = -1  # step of the evaluation point last received
    verdict: Optional[GncError] = None  # the refusal of the last gradient, if any
    # The evaluation point being received: its step, next offset and buffer.
    eval_step: int = -1
    eval_next: int = 0
    eval_out: Optional[np.ndarray] = None


class Client:
    """A gnc worker's connection to the S shards of a job.

    Args:
      servers: "host:port" of shard 0..S-1, in order.
      rank: this worker, in [0, num_workers).
      num_workers: K.
      layout: the model's tensors (a Layout, or a list of (name, shape)).
      local_batch_size: samples per step on this worker (>= 1).
      wire_dtype: "float32" or "bfloat16": the encoding of the gradients pushed and of
        the parameters pulled. bfloat16 halves those bytes; values are rounded to
        nearest even, as the C++ codec does. Evaluation points are read in whatever
        dtype each chunk carries (the shards send float32 today).
      config_hash: pin the servers' config hash; 0 accepts shard 0's (the others must
        match it).
      connect_timeout: seconds the constructor keeps retrying shards that are not up.
      step_timeout: longest wait, in seconds, for a shard's evaluation point or verdict.
        A step waits for every worker (or the straggler timeout), so make it longer
        than the slowest worker's step.
      rpc_timeout: deadline, in seconds, of every other call (offer, pull, leave).

    Raises GncError from the first shard that refuses the join (INVALID_ARGUMENT,
    FAILED_PRECONDITION, ...), DEADLINE_EXCEEDED if a shard never answered, or
    FAILED_PRECONDITION if the shards disagree on the job's config or shard map;
    ValueError for bad arguments.
    """

    def __init__(self, servers: Sequence[str], rank: int, num_workers: int,
                 layout: Layout | Iterable[TensorSpec | tuple[str, Sequence[int]]],
                 local_batch_size: int, wire_dtype: str = "float32", config_hash: int = 0,
                 connect_timeout: float = 60.0, step_timeout: float = 300.0,
                 rpc_timeout: float = 60.0):
        if isinstance(servers, str):
            raise ValueError("servers must be a list of host:port, not one string")
        if not servers:
            raise ValueError("no servers given")
        if not 0 <= rank < num_workers:
            raise ValueError(f"rank {rank} outside [0, {num_workers})")
        for name, value in (("connect_timeout", connect_timeout),
                            ("step_timeout", step_timeout), ("rpc_timeout", rpc_timeout)):
            if not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")
        self._layout = layout if isinstance(layout, Layout) else Layout(layout)
        self._rank = rank
        self._num_workers = num_workers
        self._local_batch_size = local_batch_size
        self._dtype = wire.dtype_value(wire_dtype)
        self._wire_dtype = wire_dtype
        self._connect_timeout = connect_timeout
        self._step_timeout = step_timeout
        self._rpc_timeout = rpc_timeout
        self._transport = Transport()
        self._cond = threading.Condition()
        self._left = False
        self._closed = False
        self._shards: list[_Shard] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(servers), thread_name_prefix="gnc-shard")
        try:
            for i, address in enumerate(servers):
                channel = self._transport.channel(address)
                self._shards.append(_Shard(i, address, channel, self._transport.stub(channel),
                                           self._transport.train(channel)))
            self.job = self._join_all(config_hash)
        except BaseException:
            self.close()
            raise

    # --- properties ---

    @property
    def layout(self) -> Layout:
        return self._layout

    @property
    def num_elements(self) -> int:
        return self._layout.num_elements

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def wire_dtype(self) -> str:
        return self._wire_dtype

    # --- the worker's calls ---

    def offer(self, params: np.ndarray) -> None:
        """Offers w0 (the full flat vector, float32) to every shard that has none yet;
        the first complete offer per shard wins, later ones are size-checked and
        discarded. Sent as float32 whatever the wire dtype, so w0 is exact.

        Raises ValueError for a wrong size; GncError (INVALID_ARGUMENT for a
        non-finite value, FAILED_PRECONDITION if not joined, ...) naming the shard.
        """
        flat = self._input_vector(params, "offered parameters")
        needy = [s for s in self._shards if s.needs_parameters]

        def offer_one(shard: _Shard) -> None:
            def requests() -> Iterator[gnc_pb2.OfferParametersRequest]:
                for offset, count in self._chunk_spans(shard.range):
                    request = gnc_pb2.OfferParametersRequest(rank=self._rank)
                    request.chunk.offset = offset
                    request.chunk.last = offset + count == shard.range.size
                    begin = shard.range.begin + offset
                    wire.encode(flat[begin:begin + count], gnc_pb2.FLOAT32, request.chunk)
                    yield request

            shard.stub.OfferParameters(requests(), timeout=self._rpc_timeout,
                                       metadata=self._transport.metadata())
            shard.needs_parameters = False

        self._for_each_shard(offer_one, needy)

    def receive_eval_point(self, out: np.ndarray) -> int:
        """Waits for this worker's evaluation point of the next step from every shard
        and writes it into out (float32, C-contiguous, layout.num_elements elements).
        Opens the Train streams on first use. Returns the step (if the shards
        disagree after a straggler skip, the largest; gradients are tagged per shard).

        Raises GncError: FAILED_PRECONDITION if a gradient is still due on a shard
        (push it again); DEADLINE_EXCEEDED after step_timeout; the stream's status
        (UNAVAILABLE, ...) if a shard's stream ends, the other shards' waits included.
        """
        self._check_open()
        flat = self._output_vector(out, "evaluation point buffer")
        for shard in self._shards:
            if shard.state == _State.HAVE_EVAL:
                raise self._named(shard, GncError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"no evaluation point is due: the gradient for step {shard.step} has "
                    "not been accepted yet (push it again)"))
        # Verdicts still due from a push that another shard's failure interrupted.
        self._drive(lambda s: s.state == _State.AWAIT_ACK, "verdict on the gradient")
        refused = [s for s in self._shards if s.state == _State.HAVE_EVAL]
        self._raise_first([(s, s.verdict) for s in refused])
        for shard in self._shards:
            if shard.stream is None:
                self._open_stream(shard)
            if shard.eval_next > 0 and shard.eval_out is not flat:
                # A wait that ended early left part of the point in another buffer.
                part = slice(shard.range.begin, shard.range.begin + shard.eval_next)
                flat[part] = shard.eval_out[part]
            shard.eval_out = flat
        self._drive(lambda s: s.state != _State.HAVE_EVAL, "evaluation point")
        for shard in self._shards:
            shard.eval_out = None
        return max(shard.step for shard in self._shards)

    def push_gradient(self, grad: np.ndarray, num_samples: int) -> None:
        """Sends grad (the full flat vector, taken at the last evaluation point) with
        its sample count to every shard, in the wire dtype, and waits for each verdict.

        Raises LateGradient (ABORTED) if some shard had completed the step without
        this worker: carry on, the next receive_eval_point has the new step. Otherwise
        GncError from the first shard that refused (INVALID_ARGUMENT for a non-finite
        value, ...; the gradient may then be pushed again) or whose stream failed;
        DEADLINE_EXCEEDED after step_timeout. ValueError for a wrong size.
        """
        self._check_open()
        flat = self._input_vector(grad, "gradient")
        for shard in self._shards:
            if shard.stream is None:
                raise self._named(shard, GncError(grpc.StatusCode.FAILED_PRECONDITION,
                                                  "no evaluation point received yet"))
        targets = [s for s in self._shards if s.state == _State.HAVE_EVAL]
        for shard in targets:
            for offset, count in self._chunk_spans(shard.range):
                begin = shard.range.begin + offset
                shard.stream.send(wire.gradient_request(
                    shard.step, 0, num_samples, offset, offset + count == shard.range.size,
                    flat[begin:begin + count], self._dtype))
            shard.state = _State.AWAIT_ACK
            shard.verdict = None
        self._drive(lambda s: s.state == _State.AWAIT_ACK, "verdict on the gradient")
        self._raise_first([(s, s.verdict) for s in targets])

    def pull(self, out: np.ndarray, dtype: Optional[str] = None) -> int:
        """Writes the unperturbed parameters w (full flat vector) into out (float32,
        C-contiguous). dtype: the encoding on the wire, default the client's wire dtype.
        Returns the step of the snapshot (the smallest over shards).

        Raises GncError (FAILED_PRECONDITION if not initialised, DEADLINE_EXCEEDED
        after rpc_timeout, ...) naming the shard; ValueError for a wrong size.
        """
        self._check_open()
        flat = self._output_vector(out, "parameter buffer")
        dtype_value = self._dtype if dtype is None else wire.dtype_value(dtype)
        steps: dict[int, int] = {}

        def pull_one(shard: _Shard) -> None:
            size = shard.range.size
            next_offset = 0
            responses = shard.stub.PullParameters(
                gnc_pb2.PullRequest(dtype=dtype_value), timeout=self._rpc_timeout,
                metadata=self._transport.metadata())
            for response in responses:
                payload = wire.Payload(response.chunk)
                if response.chunk.offset != next_offset or next_offset + payload.count > size:
                    raise GncError(grpc.StatusCode.DATA_LOSS, "parameter chunks out of order")
                begin = shard.range.begin + next_offset
                payload.decode(flat[begin:begin + payload.count])
                next_offset += payload.count
                steps[shard.index] = response.step
            if next_offset != size:
                raise GncError(grpc.StatusCode.DATA_LOSS, "parameter pull ended early")

        self._for_each_shard(pull_one, self._shards)
        return min(steps.values())

    def leave(self) -> None:
        """Tells every shard this worker is done, then closes the streams and channels.
        Idempotent. Raises GncError naming the first shard that refused (the client is
        closed all the same)."""
        if self._left or self._closed:
            return
        self._left = True

        def leave_one(shard: _Shard) -> None:
            shard.stub.Leave(gnc_pb2.LeaveRequest(rank=self._rank), timeout=self._rpc_timeout,
                             metadata=self._transport.metadata())

        try:
            self._for_each_shard(leave_one, self._shards)
        finally:
            self.close()

    def close(self) -> None:
        """Ends the streams and closes the channels without leaving the job (the shards
        then treat this worker as gone). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for shard in self._shards:
            if shard.stream is not None:
                shard.stream.close()
                shard.stream = None
            shard.channel.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Leaves the job when the block ends normally; only closes on an exception."""
        if exc_type is None:
            self.leave()
        else:
            self.close()

    # --- joining ---

    def _join_all(self, config_hash: int) -> JobInfo:
        # Shard 0 first: it fixes the config hash that every other shard must have.
        first = self._call_shard(self._shards[0], lambda s: self._join(s, config_hash))
        self._for_each_shard(lambda s: self._join(s, first.config_hash), self._shards[1:])
        return JobInfo(config_hash=first.config_hash, layout_hash=first.layout_hash,
                       total_steps=first.total_steps, mode=_MODES.get(first.mode, "unspecified"),
                       ranges=[s.range for s in self._shards])

    def _join(self, shard: _Shard, config_hash: int) -> gnc_pb2.JoinResponse:
        request = gnc_pb2.JoinRequest(
            rank=self._rank, num_workers=self._num_workers, num_shards=len(self._shards),
            shard_index=shard.index, layout=self._layout.to_proto(),
            local_batch_size=self._local_batch_size, config_hash=config_hash)
        deadline = time.monotonic() + self._connect_timeout
        while True:
            attempt = min(_JOIN_ATTEMPT_S, max(deadline - time.monotonic(), 0.01))
            try:
                response = shard.stub.Join(request, timeout=attempt, wait_for_ready=True,
                                           metadata=self._transport.metadata())
                break
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                if time.monotonic() >= deadline:
                    raise GncError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"no answer within {self._connect_timeout:g} s: "
                                   f"{e.details()}") from None
                time.sleep(_JOIN_RETRY_PAUSE_S)
        shard.range = ShardRange(response.shard_begin, response.shard_end)
        shard.needs_parameters = response.needs_parameters
        expected = shard_range(self._layout.num_elements, len(self._shards), shard.index)
        if shard.range != expected:
            raise GncError(grpc.StatusCode.FAILED_PRECONDITION,
                           "shard range differs from the client's shard map")
        return response

    # --- the Train streams ---

    def _open_stream(self, shard: _Shard) -> None:
        shard.stream = _TrainStream(shard.train, self._transport.metadata(), self._rank,
                                    self._cond, f"gnc-train-{shard.index}")
        shard.state = _State.AWAIT_EVAL
        shard.eval_next = 0

    def _drive(self, waiting: Callable[[_Shard], bool], what: str) -> None:
        """Handles the streams' messages until no shard is `waiting`, within
        step_timeout. Waits on all of them at once: the stream of any waited-for shard
        that ends ends the whole wait with its error, so a dead shard is reported at
        once even when another shard can then never complete its step."""
        deadline = time.monotonic() + self._step_timeout
        while True:
            pending = [s for s in self._shards if waiting(s)]
            if not pending:
                return
            shard, item = self._next_item(pending, deadline)
            if shard is None:
                names = ", ".join(f"shard {s.index} ({s.address})" for s in pending)
                raise self._named(pending[0], GncError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no {what} within {self._step_timeout:g} s from {names}"))
            if isinstance(item, _StreamEnd):
                raise self._stream_failed(shard, item.error)
            try:
                self._handle(shard, item)
            except GncError as e:
                raise self._stream_failed(shard, e) from None

    def _next_item(self, pending: list[_Shard], deadline: float):
        """The next item (message or _StreamEnd) of whichever pending shard has one,
        or (None, None) at the deadline."""
        with self._cond:
            while True:
                for shard in pending:
                    if shard.stream.items:
                        return shard, shard.stream.items.popleft()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None, None
                self._cond.wait(remaining)

    def _handle(self, shard: _Shard, response: gnc_pb2.TrainResponse) -> None:
        """Applies one message of shard's stream. Raises GncError (DATA_LOSS) for a
        message the protocol does not allow in the shard's state."""
        kind = response.WhichOneof("kind")
        if kind == "ack" and shard.state == _State.AWAIT_ACK:
            ack = response.ack
            code = status_code(ack.code)
            if code in (grpc.StatusCode.OK, grpc.StatusCode.ABORTED):
                shard.state = _State.AWAIT_EVAL
            else:
                shard.state = _State.HAVE_EVAL  # refused: the gradient may be sent again
            if code == grpc.StatusCode.ABORTED:
                shard.verdict = self._named(shard, LateGradient(code, ack.message))
            elif code != grpc.StatusCode.OK:
                shard.verdict = self._named(shard, GncError(code, ack.message))
        elif kind == "eval_point" and shard.state == _State.AWAIT_EVAL:
            self._take_eval_chunk(shard, response.eval_point)
        else:
            raise GncError(grpc.StatusCode.DATA_LOSS,
                           f"unexpected {kind} message while in state {shard.state.name}")

    def _take_eval_chunk(self, shard: _Shard, point) -> None:
        chunk = point.chunk
        if chunk.offset == 0:  # a (re)start: the server moved on to a newer step
            shard.eval_step = point.step
            shard.eval_next = 0
        if point.step != shard.eval_step or chunk.offset != shard.eval_next:
            raise GncError(grpc.StatusCode.DATA_LOSS,
                           f"evaluation point out of order at offset {chunk.offset}")
        try:
            payload = wire.Payload(chunk)
        except ValueError as e:
            raise GncError(grpc.StatusCode.DATA_LOSS, str(e)) from None
        size = shard.range.size
        if shard.eval_next + payload.count > size:
            raise GncError(grpc.StatusCode.DATA_LOSS, "evaluation point exceeds the shard")
        begin = shard.range.begin + shard.eval_next
        payload.decode(shard.eval_out[begin:begin + payload.count])
        shard.eval_next += payload.count
        if chunk.last:
            if shard.eval_next != size:
                raise GncError(grpc.StatusCode.DATA_LOSS, "evaluation point ended early")
            shard.step = shard.eval_step
            shard.eval_next = 0
            shard.state = _State.HAVE_EVAL

    def _stream_failed(self, shard: _Shard, error: Optional[BaseException]) -> GncError:
        """The one place where a Train stream's failure is handled: the stream is
        dropped (the next receive_eval_point opens a new one, and the shard then sends
        its current point) and the error to raise, naming the shard, is returned."""
        if shard.stream is not None:
            shard.stream.close()
            shard.stream = None
        shard.state = _State.AWAIT_EVAL
        shard.eval_next = 0
        if error is None:
            error = GncError(grpc.StatusCode.UNAVAILABLE, "the server closed the Train stream")
        return self._named(shard, error)

    # --- fan-out and errors ---

    def _call_shard(self, shard: _Shard, fn: Callable[[_Shard], _T]) -> _T:
        try:
            return fn(shard)
        except (GncError, grpc.RpcError, ValueError) as e:
            raise self._named(shard, e) from None

    def _for_each_shard(self, fn: Callable[[_Shard], object], shards: Sequence[_Shard]) -> None:
        """Runs fn on every shard concurrently; raises the first shard's error (a real
        one before a LateGradient, which callers treat as "carry on")."""
        if not shards:
            return
        futures = [(s, self._pool.submit(self._call_shard, s, fn)) for s in shards]
        # Every call inside has its own deadline; this bound only guards against a bug.
        limit = self._connect_timeout + self._rpc_timeout + 30
        done, _ = concurrent.futures.wait([f for _, f in futures], timeout=limit)
        results = []
        for shard, future in futures:
            if future not in done:
                results.append((shard, GncError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                                f"no answer within {limit:g} s")))
            else:
                results.append((shard, future.exception()))
        self._raise_first(results)

    def _raise_first(self, results: Sequence[tuple[_Shard, Optional[BaseException]]]) -> None:
        late = None
        for shard, error in results:
            if error is None:
                continue
            if isinstance(error, LateGradient):
                late = late or error
                continue
            raise self._named(shard, error)
        if late is not None:
            raise late

    @staticmethod
    def _named(shard: _Shard, error: BaseException) -> BaseException:
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

    # --- buffers ---

    def _check_open(self) -> None:
        if self._left or self._closed:
            raise GncError(grpc.StatusCode.FAILED_PRECONDITION,
                           "the client has left the job" if self._left else "the client is closed")

    def _input_vector(self, values: np.ndarray, what: str) -> np.ndarray:
        flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        if flat.size != self.num_elements:
            raise ValueError(f"{what} has {flat.size} elements, layout has {self.num_elements}")
        return flat

    def _output_vector(self, out: np.ndarray, what: str) -> np.ndarray:
        if not isinstance(out, np.ndarray) or out.dtype != np.float32 or \
                not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"{what} must be a writable, C-contiguous float32 numpy array")
        if out.size != self.num_elements:
            raise ValueError(f"{what} has {out.size} elements, layout has {self.num_elements}")
        return out.reshape(-1)

    @staticmethod
    def _chunk_spans(rng: ShardRange) -> Iterator[tuple[int, int]]:
        """(offset, count) of the chunks covering a shard's range, in offset order."""
        for offset in range(0, rng.size, wire.CHUNK_ELEMENTS):
            yield offset, min(wire.CHUNK_ELEMENTS, rng.size - offset)
