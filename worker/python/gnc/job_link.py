"""This worker's link to the job as a whole, for gnc.client: joins every shard, keeps
the job's identity (id, generation), brings the shards to one step (rewinds, or a
FAILED_PRECONDITION naming each shard and its step) and says what a stalled job waits
for. The unary calls of the protocol, run on the shards concurrently by a ShardPool.

Thread-compatible: the client's one driving thread calls everything here.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, TypeVar

import grpc

from gnc.errors import GncError, LateGradient
from gnc.job_sync import ShardJobView, SyncKind, decide_job_sync
from gnc.layout import Layout, ShardRange, shard_range
from gnc.shard_link import ShardLink, named
from gnc.v1 import gnc_pb2

_log = logging.getLogger("gnc")
_MODES = {gnc_pb2.NONE: "none", gnc_pb2.GNC: "gnc", gnc_pb2.ISOTROPIC: "isotropic"}
# How long one Join, Rewind or GetStatus attempt may take (kCallTimeout in C++).
CALL_TIMEOUT_S = 10.0
_STATUS_TIMEOUT_S = 5.0
_JOIN_RETRY_PAUSE_S = 0.2
# Reconnect backoff: from 0.1 s, doubling, at most 5 s between attempts.
_BACKOFF_FIRST_S, _BACKOFF_MAX_S = 0.1, 5.0
# Codes of a shard that is not reachable (yet): retried while synchronizing.
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED}
_T = TypeVar("_T")


@dataclass
class JobInfo:
    """What the shards told this worker on join."""

    job_id: int = 0  # 0 until the job's parameters exist
    generation: int = 0  # incremented by every restore and rewind
    config_hash: int = 0
    layout_hash: int = 0
    total_steps: int = 0  # 0 = not fixed by the servers
    mode: str = ""  # none, gnc, isotropic
    ranges: list[ShardRange] = field(default_factory=list)  # per shard, global ranges


def raise_first(results: Sequence[tuple[ShardLink, Optional[BaseException]]]) -> None:
    """Raises the first shard's error, naming it: a real one before a LateGradient,
    which callers treat as "carry on"."""
    late = None
    for shard, error in results:
        if error is None:
            continue
        if isinstance(error, LateGradient):
            late = late or error
            continue
        raise named(shard, error)
    if late is not None:
        raise late


class ShardPool:
    """Runs a call on several shards at once, one thread each."""

    def __init__(self, num_shards: int, limit_s: float):
        """limit_s: every call run here has its own deadline below this; the bound
        only guards against a bug."""
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=num_shards, thread_name_prefix="gnc-shard")
        self._limit_s = limit_s

    def each(self, fn: Callable[[ShardLink], _T], shards: Sequence[ShardLink]
             ) -> list[tuple[ShardLink, Optional[_T], Optional[BaseException]]]:
        """Runs fn on every shard concurrently; returns (shard, result, error) each."""
        futures = [(s, self._pool.submit(fn, s)) for s in shards]
        concurrent.futures.wait([f for _, f in futures], timeout=self._limit_s)
        results = []
        for shard, future in futures:
            if not future.done():
                results.append((shard, None, GncError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                                      f"no answer within {self._limit_s:g} s")))
            elif future.exception() is not None:
                results.append((shard, None, future.exception()))
            else:
                results.append((shard, future.result(), None))
        return results

    def for_each(self, fn: Callable[[ShardLink], object], shards: Sequence[ShardLink]) -> None:
        """Runs fn on every shard concurrently; raises as raise_first."""
        raise_first([(s, e) for s, _, e in self.each(fn, shards)])

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class JobLink:
    """The job as this worker sees it. `info` is the JobInfo the client exposes."""

    def __init__(self, shards: Sequence[ShardLink], pool: ShardPool, rank: int,
                 num_workers: int, layout: Layout, local_batch_size: int,
                 metadata: Callable[[], Sequence[tuple[str, str]]]):
        self._shards = shards
        self._pool = pool
        self._rank = rank
        self._num_workers = num_workers
        self._layout = layout
        self._local_batch_size = local_batch_size
        self._metadata = metadata
        self.info = JobInfo()

    def connect(self, config_hash: int, timeout: float) -> None:
        """Joins shard 0 (it fixes the config hash that every other shard must have),
        then every shard, retrying shards that are not up for `timeout` seconds, and
        synchronizes. Raises GncError as Client()."""
        deadline = time.monotonic() + timeout
        first = self._shards[0]
        while True:
            try:
                response = self._join_once(first, config_hash, deadline)
                break
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise named(first, e) from None
                if time.monotonic() >= deadline:
                    raise GncError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"no answer within {timeout:g} s: {e.details()}",
                                   first.index, first.address) from None
                time.sleep(_JOIN_RETRY_PAUSE_S)
            except GncError as e:
                raise named(first, e) from None
        self.info = JobInfo(config_hash=response.config_hash, layout_hash=response.layout_hash,
                            total_steps=response.total_steps,
                            mode=_MODES.get(response.mode, "unspecified"))
        try:
            self.synchronize(deadline, timeout)
        except GncError as e:
            if e.code != grpc.StatusCode.UNAVAILABLE:
                raise
            raise GncError(grpc.StatusCode.DEADLINE_EXCEEDED, e.message, e.shard,
                           e.address) from None
        self.info.ranges = [s.range for s in self._shards]

    def synchronize(self, deadline: float, budget: float) -> None:
        """Joins every shard (retrying unreachable ones with exponential backoff until
        `deadline`, `budget` seconds from the start) and acts on decide_job_sync until
        the job is consistent: carries on, rewinds the shards that need it (any client
        may: Rewind is idempotent by generation), or raises FAILED_PRECONDITION naming
        each shard and its step. Raises UNAVAILABLE naming a shard that never answered;
        a shard's refusal of the join otherwise."""
        backoff = _BACKOFF_FIRST_S

        def wait_or_raise(why: BaseException) -> None:
            nonlocal backoff
            now = time.monotonic()
            if now >= deadline:
                raise why
            time.sleep(min(backoff, deadline - now))
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

        while True:
            results = self._pool.each(
                lambda s: self._join_once(s, self.info.config_hash, deadline), self._shards)
            unreachable = None
            for shard, _, error in results:
                if error is None:
                    continue
                error = named(shard, error)
                if isinstance(error, GncError) and error.code in _UNREACHABLE:
                    unreachable = unreachable or GncError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"did not answer within {budget:g} s: {error.message}",
                        shard.index, shard.address)
                    continue
                raise error
            if unreachable is not None:
                wait_or_raise(unreachable)
                continue
            views = [ShardJobView(s.index, s.address, s.job.initialized, s.job.job_id,
                                  s.job.generation, s.job.step, list(s.job.rewind_steps),
                                  s.job.diverged) for s in self._shards]
            d = decide_job_sync(views, self.info.job_id)
            if d.kind == SyncKind.FAIL:
                raise GncError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"worker {self._rank}: {d.message}")
            if d.kind == SyncKind.READY:
                self.info.job_id, self.info.generation = d.job_id, d.generation
                return
            _log.warning("worker %d: rewinding job %x to step %d (generation %d) on shard(s) %s",
                         self._rank, d.job_id, d.step, d.generation,
                         ",".join(map(str, d.shards)))
            request = gnc_pb2.RewindRequest(job_id=d.job_id, step=d.step, generation=d.generation)
            # Loading a checkpoint of a large shard takes a while: allow the whole budget.
            timeout = max(deadline - time.monotonic(), CALL_TIMEOUT_S)
            results = self._pool.each(
                lambda s: s.stub.Rewind(request, timeout=timeout, metadata=self._metadata()),
                [self._shards[i] for i in d.shards])
            for shard, _, error in results:
                if error is not None:
                    # The shards moved on meanwhile (another client's rewind, a
                    # restart): look again.
                    wait_or_raise(named(shard, error))
                    break

    def stall_error(self, what: str, stalled: Sequence[ShardLink], waited: float) -> GncError:
        """DEADLINE_EXCEEDED for `what`, after `waited` seconds without progress,
        naming what every shard waits for (from its GetStatus, as the C++ client's
        StallError), attributed to the first shard still waited for."""
        results = self._pool.each(
            lambda s: s.stub.GetStatus(gnc_pb2.StatusRequest(), timeout=_STATUS_TIMEOUT_S,
                                       metadata=self._metadata()), self._shards)
        parts = []
        for shard, status, error in results:
            who = f"shard {shard.index} ({shard.address})"
            if error is not None:
                details = error.details() if isinstance(error, grpc.RpcError) else str(error)
                parts.append(f"{who}: unreachable ({details})")
            elif status.job.diverged:
                parts.append(f"{who}: diverged at step {status.step}")
            elif not status.waiting_for_ranks:
                parts.append(f"{who}: at step {status.step}, waiting for no rank")
            else:
                ranks = ",".join(map(str, status.waiting_for_ranks))
                parts.append(f"{who}: at step {status.step}, waiting "
                             f"{int(status.waiting_seconds)} s for rank(s) {ranks}")
        return GncError(grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"worker {self._rank}: no progress within {waited:g} s {what}: "
                        + "; ".join(parts), stalled[0].index, stalled[0].address)

    def _join_once(self, shard: ShardLink, config_hash: int,
                   deadline: float) -> gnc_pb2.JoinResponse:
        """One Join of shard, waiting for it to be up for at most CALL_TIMEOUT_S and
        not past `deadline`. Raises grpc.RpcError or GncError."""
        request = gnc_pb2.JoinRequest(
            rank=self._rank, num_workers=self._num_workers, num_shards=len(self._shards),
            shard_index=shard.index, layout=self._layout.to_proto(),
            local_batch_size=self._local_batch_size, config_hash=config_hash,
            job_id=self.info.job_id)
        timeout = max(min(deadline - time.monotonic(), CALL_TIMEOUT_S), 0.01)
        response = shard.stub.Join(request, timeout=timeout, wait_for_ready=True,
                                   metadata=self._metadata())
        shard.range = ShardRange(response.shard_begin, response.shard_end)
        shard.needs_parameters = response.needs_parameters
        shard.job = response.job
        if shard.range != shard_range(self._layout.num_elements, len(self._shards), shard.index):
            raise GncError(grpc.StatusCode.FAILED_PRECONDITION,
                           "shard range differs from the client's shard map")
        return response
