"""The worker side of gnc in Python, with the semantics of the C++ client
(worker/client.h): join every shard, offer w0, then per step receive this worker's
evaluation point x_k and push the gradient taken there.

    with gnc.Client(servers, rank, num_workers, layout, local_batch_size=64) as client:
        client.offer(w0)                       # first offer per shard wins
        x = np.empty(layout.num_elements, np.float32)
        g = np.empty_like(x)
        while (step := client.receive_eval_point(x)) < total_steps:
            ... g = gradient of the loss at x on the batch of `step` ...
            try:
                client.push_gradient(g, batch_size)
            except gnc.LateGradient:
                pass                           # late, or the job was rewound: carry on
        client.pull(x)                         # the unperturbed w, for evaluation
    # leaving the block calls leave()

Every shard has one long-lived Train stream, driven concurrently: a push sends to
all shards at once and a receive takes chunks from whichever shard answers first.
Every status a shard returns is raised as a GncError naming the shard.

Failures (DESIGN section 6), as the C++ client handles them. Every wait ends: a call
that sees no progress for step_timeout raises DEADLINE_EXCEEDED naming what every
shard waits for. When a shard's stream fails, the client ends its other waits,
reconnects with exponential backoff for up to reconnect_timeout, and looks at every
shard's job (id, generation, step): it carries on, rewinds the job to the newest step
every shard holds (a restarted shard restores a checkpoint), or raises
FAILED_PRECONDITION naming each shard and its step (gnc.job_sync decides). It never
combines evaluation points of different jobs or generations. After a rewind the next
receive_eval_point returns the rewound step, which may be lower than the last: derive
each step's batch from the step, so that the job resumes where it was.

Thread-compatible: one thread drives a client.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence

import grpc
import numpy as np

from gnc import wire
from gnc.errors import GncError, LateGradient
from gnc.job_link import CALL_TIMEOUT_S, JobInfo, JobLink, ShardPool, raise_first
from gnc.layout import Layout, TensorSpec
from gnc.shard_link import PointTag, ShardLink, StreamEnd, StreamState, named
from gnc.transport import Transport
from gnc.v1 import gnc_pb2

_log = logging.getLogger("gnc")
# A call recovers at most this many times before it gives up.
_MAX_RECOVERIES = 20
# Codes of a stream that may work again after a reconnect.
_RECOVERABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}


@dataclass
class _Failure:
    """Why a wait on the streams ended early: a stream broke (`error`), or no shard
    made progress within step_timeout (`stalled`: the shards still waited for)."""

    error: Optional[GncError] = None
    stalled: Sequence[ShardLink] = ()


class Client:
    """A gnc worker's connection to the S shards of a job.

    Args:
      servers: "host:port" of shard 0..S-1, in order.
      rank: this worker, in [0, num_workers).
      num_workers: K.
      layout: the model's tensors (a Layout, or a list of (name, shape)).
      local_batch_size: samples per step on this worker (>= 1).
      wire_dtype: "float32" or "bfloat16": the encoding of the gradients pushed, of
        the parameters pulled and, through the Train stream's Hello, of the
        evaluation points the shards send (a shard that does not honour it sends
        float32; each chunk says its dtype and is decoded as it comes). bfloat16
        halves those bytes; values are rounded to nearest even, as the C++ codec does.
      config_hash: pin the servers' config hash; 0 accepts shard 0's (the others must
        match it).
      connect_timeout: seconds the constructor keeps retrying shards that are not up.
      reconnect_timeout: seconds a call keeps reconnecting (exponential backoff) to a
        shard whose stream broke, before it raises UNAVAILABLE naming the shard.
      step_timeout: the longest, in seconds, any call waits for the job to make
        progress (an evaluation point, a verdict on a gradient). A step waits for
        every worker (or the straggler timeout), so make it longer than the slowest
        worker's step.
      rpc_timeout: deadline, in seconds, of every other call (offer, pull, leave).
      tls_ca_file: PEM CA certificates that sign the shards' certificates: connect
        over TLS (as gnc-worker's --tls_ca_file).
      tls_cert_file, tls_key_file: this worker's PEM certificate and key, for shards
        that require mutual TLS (also turns TLS on, trusting the system's roots
        without tls_ca_file).
      auth_token_file: file holding the job token, sent with every call.

    Raises GncError from the first shard that refuses the join (INVALID_ARGUMENT,
    FAILED_PRECONDITION, ...), DEADLINE_EXCEEDED if a shard never answered, or
    FAILED_PRECONDITION if the shards disagree on the job's config or shard map, or the
    job cannot go on without a mixed model (a shard came back blank while the job has
    started), UNAUTHENTICATED for a missing or wrong token; ValueError for bad
    arguments or security files that cannot be read.
    """

    def __init__(self, servers: Sequence[str], rank: int, num_workers: int,
                 layout: Layout | Iterable[TensorSpec | tuple[str, Sequence[int]]],
                 local_batch_size: int, wire_dtype: str = "float32", config_hash: int = 0,
                 connect_timeout: float = 60.0, reconnect_timeout: float = 120.0,
                 step_timeout: float = 600.0, rpc_timeout: float = 60.0,
                 tls_ca_file: Optional[str] = None, tls_cert_file: Optional[str] = None,
                 tls_key_file: Optional[str] = None, auth_token_file: Optional[str] = None):
        if isinstance(servers, str):
            raise ValueError("servers must be a list of host:port, not one string")
        if not servers:
            raise ValueError("no servers given")
        if not 0 <= rank < num_workers:
            raise ValueError(f"rank {rank} outside [0, {num_workers})")
        for name, value in (("connect_timeout", connect_timeout),
                            ("reconnect_timeout", reconnect_timeout),
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
        self._reconnect_timeout = reconnect_timeout
        self._step_timeout = step_timeout
        self._rpc_timeout = rpc_timeout
        self._transport = Transport(tls_ca_file, tls_cert_file, tls_key_file, auth_token_file)
        self._cond = threading.Condition()
        self._left = False
        self._closed = False
        # Set when the streams were closed since the last receive_eval_point (a
        # recovery, a stalled wait): the gradient the caller computed must be matched
        # against fresh points before it is pushed.
        self._recovered = False
        self._point_tags: list[PointTag] = []  # per shard, of the last receive_eval_point
        self._shards: list[ShardLink] = []
        self._pool = ShardPool(len(servers), max(connect_timeout, reconnect_timeout,
                                                 rpc_timeout, CALL_TIMEOUT_S) + 30)
        self._job = JobLink(self._shards, self._pool, rank, num_workers, self._layout,
                            local_batch_size, self._transport.metadata)
        try:
            for i, address in enumerate(servers):
                channel = self._transport.channel(address)
                self._shards.append(ShardLink(i, address, channel, self._transport.stub(channel),
                                              self._transport.train(channel)))
            self._job.connect(config_hash, connect_timeout)
        except BaseException:
            self.close()
            raise

    # --- properties ---

    @property
    def job(self) -> JobInfo:
        """What the shards said of the job: id, generation, config, mode, ranges."""
        return self._job.info

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

    @property
    def point_dtypes(self) -> list[str]:
        """Per shard, the encoding the last evaluation point came in ("float32" or
        "bfloat16"): the wire dtype once the shards honour it."""
        return [wire.dtype_name(s.point_dtype) for s in self._shards]

    # --- the worker's calls ---

    def offer(self, params: np.ndarray) -> None:
        """Offers w0 (the full flat vector, float32) to every shard that has none yet:
        shard 0 first, which fixes the job id (this offer's random proposal, or the id
        it already has), then the others with that id. The first complete offer per
        shard wins; later ones are size-checked and discarded. Sent as float32 whatever
        the wire dtype, so w0 is exact. A shard that came back blank in a started job
        is never offered anything: the join refused the job already.

        Raises ValueError for a wrong size; GncError (INVALID_ARGUMENT for a
        non-finite value, FAILED_PRECONDITION if not joined or if a shard answers with
        another job id than shard 0's, ...) naming the shard.
        """
        self._check_open()
        flat = self._input_vector(params, "offered parameters")
        if not any(s.needs_parameters for s in self._shards):
            return
        job_id = self.job.job_id
        first = self._shards[0]
        if job_id == 0 and first.job.initialized:
            job_id = first.job.job_id
        while job_id == 0:
            job_id = secrets.randbits(64)
        if first.needs_parameters:
            try:
                job_id = self._offer_to(first, flat, job_id)
            except (GncError, grpc.RpcError, ValueError) as e:
                raise named(first, e) from None

        def offer_other(shard: ShardLink) -> None:
            theirs = self._offer_to(shard, flat, job_id)
            if theirs != job_id:
                raise GncError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"serves job {theirs:x}, shard 0 serves job {job_id:x}")

        self._pool.for_each(offer_other, [s for s in self._shards if s.needs_parameters])
        self.job.job_id = job_id

    def receive_eval_point(self, out: np.ndarray) -> int:
        """Waits for this worker's evaluation point of the next step from every shard
        and writes it into out (float32, C-contiguous, layout.num_elements elements).
        Opens the Train streams on first use. Returns the step (if the shards disagree
        after a straggler skip, the largest; gradients are tagged per shard); after a
        rewind, the rewound step.

        Raises GncError: FAILED_PRECONDITION if a gradient is still due on a shard
        (push it again) or the job cannot go on without a mixed model;
        DEADLINE_EXCEEDED after step_timeout without progress, naming what every shard
        waits for; UNAVAILABLE naming the shard that did not come back within
        reconnect_timeout; a shard's refusal otherwise.
        """
        self._check_open()
        flat = self._output_vector(out, "evaluation point buffer")
        for shard in self._shards:
            if shard.state == StreamState.HAVE_EVAL and shard.pending is None:
                raise named(shard, GncError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"no evaluation point is due: the gradient for step {shard.tag.step} "
                    "has not been accepted yet (push it again)"))
        for recoveries in itertools.count():
            failure = self._receive(flat)
            if failure is None and not self._points_consistent():
                self._close_streams()
                failure = _Failure(GncError(
                    grpc.StatusCode.DATA_LOSS,
                    "the shards sent points of different generations (a rewind is under way)"))
            if failure is None:
                break
            if failure.stalled:
                raise self._job.stall_error("waiting for the next evaluation point",
                                            failure.stalled, self._step_timeout)
            if failure.error.code not in _RECOVERABLE or recoveries >= _MAX_RECOVERIES:
                raise failure.error
            self._recover(failure.error)
        self._recovered = False
        self.job.generation = self._shards[0].tag.generation
        self._point_tags = [s.tag for s in self._shards]
        return max(tag.step for tag in self._point_tags)

    def push_gradient(self, grad: np.ndarray, num_samples: int) -> None:
        """Sends grad (the full flat vector, taken at the last evaluation point) with
        its sample count to every shard, in the wire dtype, tagged with the point's
        step and generation, and waits for each verdict. After a reconnect in the same
        generation, the shards still at that point get it again.

        Raises LateGradient (ABORTED) if some shard had completed the step without
        this worker, or the job was rewound meanwhile: carry on, the next
        receive_eval_point has the step to work on. Otherwise GncError from the first
        shard that refused (INVALID_ARGUMENT for a non-finite value, ...; the gradient
        may then be pushed again; FAILED_PRECONDITION once a shard diverged), or as
        receive_eval_point for failures (DEADLINE_EXCEEDED, UNAVAILABLE,
        FAILED_PRECONDITION). ValueError for a wrong size.
        """
        self._check_open()
        flat = self._input_vector(grad, "gradient")
        if len(self._point_tags) != len(self._shards):
            raise GncError(grpc.StatusCode.FAILED_PRECONDITION, "no evaluation point received yet")
        failure, pushed = None, []
        # Streams closed since the last receive (a recovery during pull, a stalled
        # wait): match the gradient against fresh points first.
        rematch = self._recovered
        if not rematch:
            pushed = [s for s in self._shards
                      if s.state == StreamState.HAVE_EVAL and s.pending is None]
            for shard in pushed:
                shard.send_gradient(flat, num_samples, self._dtype)
            failure = self._drive(pushed, lambda s: s.state != StreamState.AWAIT_ACK)
        for recoveries in itertools.count():
            if failure is not None and failure.stalled:
                raise self._job.stall_error("waiting for the shards to take the gradient",
                                            failure.stalled, self._step_timeout)
            if not rematch:
                if failure is None:
                    raise_first([(s, s.verdict) for s in pushed])
                    return
                if failure.error.code not in _RECOVERABLE or recoveries >= _MAX_RECOVERIES:
                    raise failure.error
                self._recover(failure.error)
            # The streams are new. In another generation the gradient is void; in the
            # same one, shards still at the point it was taken at get it again.
            rematch = False
            self._recovered = False
            taken_at = self._point_tags[0]
            if self.job.generation != taken_at.generation:
                raise self._rewound(taken_at, self.job.generation)
            failure, pushed = self._push_again(flat, num_samples)
            newer = [s.tag.generation for s in self._shards
                     if s.pending is not None and s.tag.generation != taken_at.generation]
            if failure is None and newer:
                raise self._rewound(taken_at, newer[0])

    def pull(self, out: np.ndarray, dtype: Optional[str] = None) -> int:
        """Writes the unperturbed parameters w (full flat vector) into out (float32,
        C-contiguous). dtype: the encoding on the wire, default the client's wire dtype.
        Returns the step of the snapshot (the smallest over shards). Snapshots of
        different job ids or generations are never combined: the client reconnects
        (and rewinds) and pulls again.

        Raises GncError (FAILED_PRECONDITION if not initialised, DEADLINE_EXCEEDED
        after rpc_timeout, UNAVAILABLE after reconnect_timeout, ...) naming the shard;
        ValueError for a wrong size.
        """
        self._check_open()
        flat = self._output_vector(out, "parameter buffer")
        dtype_value = self._dtype if dtype is None else wire.dtype_value(dtype)
        for recoveries in itertools.count():
            results = self._pool.each(lambda s: self._pull_one(s, flat, dtype_value),
                                       self._shards)
            failed = next((named(s, e) for s, _, e in results if e is not None), None)
            if failed is None:
                tags = [tag for _, tag, _ in results]
                if all(t[:2] == tags[0][:2] for t in tags):
                    return min(t.step for t in tags)
                failed = GncError(grpc.StatusCode.DATA_LOSS,
                                  "the shards answered from different generations")
            if not isinstance(failed, GncError) or failed.code not in _RECOVERABLE or \
                    recoveries >= _MAX_RECOVERIES:
                raise failed
            self._recover(failed)

    def leave(self) -> None:
        """Tells every shard this worker is done, then closes the streams and channels.
        Idempotent. Raises GncError naming the first shard that refused (the client is
        closed all the same)."""
        if self._left or self._closed:
            return
        self._left = True

        def leave_one(shard: ShardLink) -> None:
            shard.stub.Leave(gnc_pb2.LeaveRequest(rank=self._rank), timeout=self._rpc_timeout,
                             metadata=self._transport.metadata())

        try:
            self._pool.for_each(leave_one, self._shards)
        finally:
            self.close()

    def close(self) -> None:
        """Ends the streams and closes the channels without leaving the job (the shards
        then treat this worker as gone). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for shard in self._shards:
            shard.close_stream()
            shard.channel.close()
        self._pool.shutdown()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Leaves the job when the block ends normally; only closes on an exception."""
        if exc_type is None:
            self.leave()
        else:
            self.close()

    # --- recovering ---

    def _recover(self, cause: GncError) -> None:
        """After a stream failure: closes every stream, then synchronizes within
        reconnect_timeout."""
        _log.warning("worker %d: %s; reconnecting (for up to %g s)", self._rank, cause,
                     self._reconnect_timeout)
        self._close_streams()
        generation = self.job.generation
        self._job.synchronize(time.monotonic() + self._reconnect_timeout,
                              self._reconnect_timeout)
        _log.info("worker %d: reconnected to every shard%s", self._rank,
                  f"; the job is now at generation {self.job.generation}"
                  if self.job.generation != generation else "")

    @staticmethod
    def _rewound(taken_at: PointTag, generation: int) -> LateGradient:
        return LateGradient(grpc.StatusCode.ABORTED,
                            f"the job was rewound (generation {generation}) before this "
                            f"gradient of step {taken_at.step} was taken; carry on")

    # --- the Train streams ---

    def _open_stream(self, shard: ShardLink) -> None:
        shard.open_stream(self._transport.metadata(), wire.hello_request(self._rank, self._dtype),
                          self._cond)

    def _close_streams(self) -> None:
        for shard in self._shards:
            shard.close_stream()
        self._recovered = True

    def _receive(self, flat: np.ndarray) -> Optional[_Failure]:
        """One attempt to get every shard's next point into flat."""
        for shard in self._shards:
            if shard.pending is not None:
                flat[shard.range.begin:shard.range.end] = shard.pending
                shard.pending = None
                continue
            if shard.stream is None:
                self._open_stream(shard)
            shard.receive_into(flat, shard.range.begin)
        failure = self._drive(self._shards, lambda s: s.state == StreamState.HAVE_EVAL)
        for shard in self._shards:
            shard.eval_out = None
        return failure

    def _push_again(self, flat: np.ndarray, num_samples: int):
        """After the streams were closed: reads each shard's point anew; pushes the
        gradient to the shards whose point is still the one it was taken at, keeps the
        others' (newer) point for the next receive. Returns (failure, pushed)."""
        pushed: list[ShardLink] = []
        for shard in self._shards:
            if shard.pending is None:
                if shard.stream is None:
                    self._open_stream(shard)
                shard.receive_into(np.empty(shard.range.size, np.float32), 0)

        def on_point(shard: ShardLink) -> None:
            if shard.tag != self._point_tags[shard.index]:
                shard.pending = shard.eval_out  # this shard moved on: the point is the next one
            else:
                shard.send_gradient(flat, num_samples, self._dtype)
                pushed.append(shard)

        failure = self._drive(
            self._shards,
            lambda s: s.pending is not None or (s in pushed and s.state != StreamState.AWAIT_ACK),
            on_point)
        return failure, pushed

    def _drive(self, shards: Sequence[ShardLink], done: Callable[[ShardLink], bool],
               on_point: Optional[Callable[[ShardLink], None]] = None) -> Optional[_Failure]:
        """Handles the streams' messages until every one of `shards` is `done`, within
        step_timeout; on_point is called for every evaluation point completed. Waits
        on all of them at once: a stream that ends ends the whole wait, so a dead shard
        is noticed at once even when another shard can then never complete its step.
        A wait that fails closes every stream (the next call opens new ones)."""
        deadline = time.monotonic() + self._step_timeout
        while True:
            pending = [s for s in shards if not done(s)]
            if not pending:
                return None
            shard, item = self._next_item(pending, deadline)
            if shard is None:
                self._close_streams()
                return _Failure(stalled=pending)
            error = None
            if isinstance(item, StreamEnd):
                error = item.error or GncError(grpc.StatusCode.UNAVAILABLE,
                                               "the server closed the Train stream")
            else:
                try:
                    if shard.handle(item) and on_point is not None:
                        on_point(shard)
                except GncError as e:
                    error = e
            if error is not None:
                if not isinstance(error, (GncError, grpc.RpcError)):
                    error = GncError(grpc.StatusCode.DATA_LOSS, f"unreadable message: {error}")
                self._close_streams()
                return _Failure(error=named(shard, error))

    def _next_item(self, pending: list[ShardLink], deadline: float):
        """The next item (message or StreamEnd) of whichever pending shard has one,
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

    def _points_consistent(self) -> bool:
        first = self._shards[0].tag
        if any(s.tag[:2] != first[:2] for s in self._shards):
            return False
        steps = [s.tag.step for s in self._shards]
        return (self.job.job_id == 0 or first.job_id == self.job.job_id) and \
            max(steps) - min(steps) <= 1

    # --- unary calls ---

    def _offer_to(self, shard: ShardLink, flat: np.ndarray, job_id: int) -> int:
        """Offers shard its slice of flat under job_id; returns the shard's job id."""
        def requests() -> Iterator[gnc_pb2.OfferParametersRequest]:
            size = shard.range.size
            for offset in range(0, size, wire.CHUNK_ELEMENTS):
                count = min(wire.CHUNK_ELEMENTS, size - offset)
                request = gnc_pb2.OfferParametersRequest(rank=self._rank, job_id=job_id)
                request.chunk.offset = offset
                request.chunk.last = offset + count == size
                begin = shard.range.begin + offset
                wire.encode(flat[begin:begin + count], gnc_pb2.FLOAT32, request.chunk)
                yield request

        response = shard.stub.OfferParameters(requests(), timeout=self._rpc_timeout,
                                              metadata=self._transport.metadata())
        shard.needs_parameters = False
        return response.job_id

    def _pull_one(self, shard: ShardLink, flat: np.ndarray, dtype: int):
        """Pulls shard's slice of w into flat; returns the snapshot's PointTag."""
        size = shard.range.size
        next_offset, tag = 0, PointTag()
        responses = shard.stub.PullParameters(
            gnc_pb2.PullRequest(dtype=dtype), timeout=self._rpc_timeout,
            metadata=self._transport.metadata())
        for response in responses:
            payload = wire.Payload(response.chunk)
            if response.chunk.offset != next_offset or next_offset + payload.count > size:
                responses.cancel()
                raise GncError(grpc.StatusCode.DATA_LOSS, "parameter chunks out of order")
            begin = shard.range.begin + next_offset
            payload.decode(flat[begin:begin + payload.count])
            next_offset += payload.count
            tag = PointTag(response.job_id, response.generation, response.step)
        if next_offset != size:
            raise GncError(grpc.StatusCode.DATA_LOSS, "parameter pull ended early")
        return tag

    # --- fan-out and errors ---

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
