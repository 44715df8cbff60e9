"""Failures with real gnc-server processes and signals, as the Python client must
survive or report them (DESIGN section 6, the C++ client's behaviour):

- a shard killed with SIGKILL mid-run and restarted with the same flags and
  --checkpoint_dir: the Python workers reconnect, rewind the job to a step every shard
  holds and finish; in mode none the final w is bit-identical to an uninterrupted
  Python run's;
- a shard restarted blank (no checkpoint) in a started job: every Python worker, and a
  worker that joins afterwards, raises FAILED_PRECONDITION naming each shard and its
  step, and the blank shard never gets a w0;
- a worker killed with SIGKILL and no quorum: the other worker raises
  DEADLINE_EXCEEDED after step_timeout naming the rank every shard waits for.

Every call runs under a bound far above the client's own deadlines, so a hang fails
the test instead of stalling it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import unittest
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import gnc_testlib

ARGS, UNITTEST_ARGV = gnc_testlib.setup(
    ["numpy", "grpc", "google.protobuf", "gnc", "gnc.v1.gnc_pb2_grpc"])

import grpc  # noqa: E402  (after the skip check)
import numpy as np  # noqa: E402

import gnc  # noqa: E402
from gnc.v1 import gnc_pb2, gnc_pb2_grpc  # noqa: E402

N = 600_001  # two shards of two chunks each
K = 2
STEPS = 30
HANG_S = 120.0  # a job or call still running after this long has hung
SERVER_FLAGS = ["--mode=none", "--lr=0.05", "--momentum=0.9", "--weight_decay=1e-3"]


def gradient(x: np.ndarray, step: int, rank: int) -> np.ndarray:
    """A gradient that depends on the point and on (step, rank) only, like a trainer
    that derives each step's batch from the step: pulls x towards a target of the
    rank, plus noise of the step."""
    rng = np.random.default_rng([rank, step])
    target = np.float32(rank + 1)
    return (x - target) * np.float32(0.5) + rng.standard_normal(x.size, np.float32)


@dataclass
class WorkerRun:
    steps: list[int] = field(default_factory=list)  # every step receive returned
    late: int = 0  # gradients refused as late (a rewind)
    w: Optional[np.ndarray] = None  # pulled after the last step (rank 0)
    error: Optional[BaseException] = None


def run_worker(servers: list[str], rank: int, run: WorkerRun,
               before_push: Callable[[int, int], None] = lambda rank, step: None,
               **options) -> None:
    """One worker of the job: offer, then receive and push until step STEPS, as a
    trainer would (each step's gradient from the point and the step); records into
    run."""
    try:
        with gnc.Client(servers, rank, K, [("w", (N,))], 16 + rank, connect_timeout=30,
                        **options) as client:
            client.offer(np.linspace(-1, 1, N, dtype=np.float32))
            x = np.empty(N, np.float32)
            while (step := client.receive_eval_point(x)) < STEPS:
                run.steps.append(step)
                before_push(rank, step)
                try:
                    client.push_gradient(gradient(x, step, rank), 16 + rank)
                except gnc.LateGradient:
                    run.late += 1
            run.steps.append(step)
            if rank == 0:
                run.w = np.empty(N, np.float32)
                client.pull(run.w, dtype="float32")
    except BaseException as e:  # reported by the test
        run.error = e


def run_job(servers: list[str], before_push=lambda rank, step: None,
            **options) -> list[WorkerRun]:
    """K worker threads; returns their runs once every one has finished."""
    runs = [WorkerRun() for _ in range(K)]
    gnc_testlib.run_all([lambda r=r: run_worker(servers, r, runs[r], before_push, **options)
                         for r in range(K)], HANG_S, "the Python workers")
    return runs


class KillAt:
    """before_push hook: when rank 0 is about to push `step`, runs `act` (kill, then
    restart a shard) while rank 0 holds its gradient, then lets it go on."""

    def __init__(self, step: int, act: Callable[[], None]):
        self.step, self.act, self.done = step, act, False

    def __call__(self, rank: int, step: int) -> None:
        if rank == 0 and step == self.step and not self.done:
            self.done = True
            self.act()


def shard_status(address: str) -> gnc_pb2.StatusResponse:
    with grpc.insecure_channel(address) as channel:
        return gnc_pb2_grpc.ParameterShardStub(channel).GetStatus(gnc_pb2.StatusRequest(),
                                                                  timeout=10)


class ClientFailuresTest(unittest.TestCase):

    def assert_finished(self, runs: list[WorkerRun], shards=()) -> None:
        for rank, run in enumerate(runs):
            if run.error is not None:
                logs = "".join(f"\n--- shard {i} log ---\n{s.log()}" for i, s in enumerate(shards))
                raise AssertionError(f"worker {rank} failed{logs}") from run.error
            self.assertEqual(run.steps[-1], STEPS, f"worker {rank}: {run.steps}")

    def test_killed_shard_restores_and_the_job_ends_bit_identical(self) -> None:
        reference_shards = gnc_testlib.start_shards(self, ARGS.server, 2, K, SERVER_FLAGS)
        reference = run_job([s.address for s in reference_shards], reconnect_timeout=30,
                            step_timeout=60)
        self.assert_finished(reference)
        self.assertEqual(reference[0].steps, list(range(STEPS + 1)))

        checkpoints = Path(gnc_testlib.temp_dir(self))
        shards = gnc_testlib.start_shards(self, ARGS.server, 2, K, SERVER_FLAGS + [
            f"--checkpoint_dir={checkpoints}", "--checkpoint_every=8"], fixed_ports=True)

        def common_checkpoint() -> set[int]:
            steps = [{int(p.name.rsplit("-step-", 1)[1].removesuffix(".ckpt"))
                      for p in checkpoints.glob(f"shard-{i}-of-2-gen-*-step-*.ckpt")}
                     for i in range(2)]
            return steps[0] & steps[1] - {0}

        def kill_and_restart() -> None:
            # Checkpoints are written in the background: on a loaded machine the one
            # of step 8 or 16 may still be in flight at step 20. Kill once both shards
            # have one in common (otherwise only w0 is common and the shards rightly
            # hold no common step).
            deadline = time.monotonic() + HANG_S
            while not common_checkpoint():
                if time.monotonic() > deadline:
                    raise AssertionError(f"no common checkpoint: {sorted(checkpoints.iterdir())}")
                time.sleep(0.05)
            shards[1].signal(signal.SIGKILL)
            shards[1].process.wait(timeout=30)
            shards[1].restart()

        runs = run_job([s.address for s in shards], KillAt(20, kill_and_restart),
                       reconnect_timeout=30, step_timeout=60)
        self.assert_finished(runs, shards)
        log = shards[1].log()
        self.assertIn("restored step", log)
        for rank, run in enumerate(runs):
            # The job went back to a checkpointed step (8 or 16) and ran on from there.
            back = [b for a, b in zip(run.steps, run.steps[1:]) if b <= a]
            self.assertTrue(back and back[0] in (8, 16), f"worker {rank}: {run.steps}")
        self.assertGreater(runs[0].late, 0, "rank 0's gradient of step 20 was not refused")
        same = runs[0].w.view(np.uint32) == reference[0].w.view(np.uint32)
        self.assertTrue(same.all(), f"final w differs from the uninterrupted run's in "
                        f"{np.count_nonzero(~same)} of {N} elements")
        self.assertFalse(np.array_equal(runs[0].w, np.linspace(-1, 1, N, dtype=np.float32)))
        for shard in shards:  # every worker left: the shards exit by themselves
            self.assertEqual(shard.process.wait(timeout=30), 0, shard.log())

    def test_a_rewind_by_another_party_is_finished_by_the_workers(self) -> None:
        """Another client rewinds shard 0 alone, to its newest checkpoint, while the
        workers' streams stay open: a worker then sees points of two generations,
        must not combine them, and finishes the rewind on shard 1 (the case of a
        coordinator that died half-way). Mode none: the final w is the uninterrupted
        run's, bit for bit."""
        reference_shards = gnc_testlib.start_shards(self, ARGS.server, 2, K, SERVER_FLAGS)
        reference = run_job([s.address for s in reference_shards], step_timeout=60)
        self.assert_finished(reference)
        shards = gnc_testlib.start_shards(self, ARGS.server, 2, K, SERVER_FLAGS + [
            f"--checkpoint_dir={gnc_testlib.temp_dir(self)}", "--checkpoint_every=8"])
        rewound = []

        def rewind_shard_0() -> None:
            with grpc.insecure_channel(shards[0].address) as channel:
                stub = gnc_pb2_grpc.ParameterShardStub(channel)
                job = stub.GetStatus(gnc_pb2.StatusRequest(), timeout=10).job
                target = job.rewind_steps[1]  # its newest checkpoint below the current step
                stub.Rewind(gnc_pb2.RewindRequest(job_id=job.job_id, step=target,
                                                  generation=job.generation + 1), timeout=10)
                rewound.append(target)

        runs = run_job([s.address for s in shards], KillAt(20, rewind_shard_0),
                       reconnect_timeout=30, step_timeout=60)
        self.assert_finished(runs)
        self.assertIn(rewound[0], (8, 16))
        for rank, run in enumerate(runs):
            back = [b for a, b in zip(run.steps, run.steps[1:]) if b <= a]
            self.assertEqual(back[:1], rewound, f"worker {rank}: {run.steps}")
        same = runs[0].w.view(np.uint32) == reference[0].w.view(np.uint32)
        self.assertTrue(same.all(), f"final w differs from the uninterrupted run's in "
                        f"{np.count_nonzero(~same)} of {N} elements")

    def test_blank_restarted_shard_is_refused_naming_every_shard(self) -> None:
        shards = gnc_testlib.start_shards(self, ARGS.server, 2, K, SERVER_FLAGS, fixed_ports=True)
        servers = [s.address for s in shards]

        def kill_and_restart_blank() -> None:
            shards[1].signal(signal.SIGKILL)
            shards[1].process.wait(timeout=30)
            shards[1].restart()  # no --checkpoint_dir: it comes back without its state

        runs = run_job(servers, KillAt(10, kill_and_restart_blank), reconnect_timeout=30,
                       step_timeout=60)

        def check(error: Optional[BaseException], who: str) -> None:
            self.assertIsInstance(error, gnc.GncError, who)
            self.assertEqual(error.code, grpc.StatusCode.FAILED_PRECONDITION, f"{who}: {error}")
            self.assertIn(f"shard 1 ({servers[1]}) holds no job", error.message, who)
            self.assertRegex(error.message, rf"shard 0 \({servers[0]}\) is at step 1[01] ", who)

        for rank, run in enumerate(runs):
            check(run.error, f"worker {rank}")
            self.assertLessEqual(max(run.steps), 11, f"worker {rank}: {run.steps}")
        # A worker started afterwards (a restarted pod) refuses as well, before any offer.
        with self.assertRaises(gnc.GncError) as caught:
            gnc_testlib.bounded(HANG_S, "join", lambda: gnc.Client(
                servers, 0, K, [("w", (N,))], 16, connect_timeout=10))
        check(caught.exception, "a new worker")
        status = shard_status(servers[1])
        self.assertFalse(status.initialized, "the blank shard took a new w0")
        self.assertFalse(status.job.initialized)

    def test_killed_worker_without_quorum_ends_in_deadline_exceeded(self) -> None:
        shards = gnc_testlib.start_shards(self, ARGS.server, 2, K, SERVER_FLAGS)
        servers = [s.address for s in shards]
        x = np.empty(N, np.float32)
        client = gnc_testlib.bounded(HANG_S, "join", lambda: gnc.Client(
            servers, 0, K, [("w", (N,))], 16, connect_timeout=30, step_timeout=3))
        self.addCleanup(client.close)
        gnc_testlib.bounded(HANG_S, "offer", lambda: client.offer(np.zeros(N, np.float32)))
        self.assertEqual(gnc_testlib.bounded(HANG_S, "receive",
                                             lambda: client.receive_eval_point(x)), 0)
        # Rank 1 in a process of its own: joins, receives step 0, and is killed.
        other = subprocess.Popen([sys.executable, "-c", f"""
import numpy as np, gnc
c = gnc.Client({servers!r}, 1, {K}, [("w", ({N},))], 16, connect_timeout=30)
c.receive_eval_point(np.empty({N}, np.float32))
print("ready", flush=True)
import time; time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
        self.addCleanup(other.stdout.close)
        self.addCleanup(other.kill)
        line = gnc_testlib.bounded(HANG_S, "rank 1 to start", other.stdout.readline)
        self.assertEqual(line.strip(), "ready")
        other.send_signal(signal.SIGKILL)
        other.wait(timeout=30)
        gnc_testlib.bounded(HANG_S, "push",
                            lambda: client.push_gradient(np.ones(N, np.float32), 16))
        with self.assertRaises(gnc.GncError) as caught:
            gnc_testlib.bounded(HANG_S, "receive", lambda: client.receive_eval_point(x))
        error = caught.exception
        self.assertEqual(error.code, grpc.StatusCode.DEADLINE_EXCEEDED, error)
        self.assertIn("worker 0: no progress within 3 s waiting for the next evaluation point",
                      error.message)
        for s in range(2):
            self.assertRegex(error.message,
                             rf"shard {s} \({servers[s]}\): at step 0, waiting \d+ s for "
                             r"rank\(s\) 1(;|$)")


if __name__ == "__main__":
    gnc_testlib.main(UNITTEST_ARGV)
