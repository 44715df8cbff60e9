"""The Python client against two real gnc-server shards, in modes none, gnc and
isotropic: with the same scripted gradients it must produce what the C++ client
produces, bit for bit: every evaluation point of every worker at every step, and the
final w.

- float32: the reference is the C++ client (tests/python/trajectory_client.cc) pushing
  the same gradients.
- bfloat16: the reference is what the shards compute from the gradients rounded to
  bfloat16 by an independent numpy rounding (gnc_testlib.bf16_reference), pushed by the
  C++ client as float32; and, in modes none and gnc, a numpy simulation of the shards'
  step on gradients chosen so that every float32 operation of the merge is exact. A
  bfloat16 client asks for its evaluation points in bfloat16 (Hello.wire_dtype): they
  must be the reference's rounded by that independent rounding. The Python and the C++
  client (ClientOptions::wire_dtype) are both checked so in bfloat16, hence against
  each other too.

Which clients are checked is the CLIENTS list.
"""

from __future__ import annotations

import subprocess
import tempfile
import unittest
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import gnc_testlib

ARGS, UNITTEST_ARGV = gnc_testlib.setup(
    ["numpy", "grpc", "google.protobuf", "gnc", "gnc.v1.gnc_pb2_grpc"],
    lambda p: p.add_argument("--trajectory", required=True, help="trajectory_client binary"))

import numpy as np  # noqa: E402  (after the skip check)

import gnc  # noqa: E402

# (client, wire dtype) pairs checked against the reference of their dtype.
CLIENTS = [
    ("python", "float32"),
    ("python", "bfloat16"),
    ("cpp", "bfloat16"),
]

NUM_SHARDS = 2
TIMEOUT_S = 120.0


@dataclass
class Trajectory:
    points: np.ndarray  # [T+1][K][N]: x_k of steps 0..T
    w: np.ndarray  # [N]: w after step T
    w_bf16: Optional[np.ndarray] = None  # [N]: w pulled as bfloat16 (Python only)
    # The encodings the evaluation points came in (Python only): the client asks for
    # its wire dtype; shards that do not honour Hello.wire_dtype send float32.
    point_dtypes: set[str] = field(default_factory=set)


@dataclass
class Job:
    mode: str
    num_elements: int
    num_samples: list[int]
    w0: np.ndarray
    grads: np.ndarray  # [T][K][N]
    server_flags: list[str]

    @property
    def num_workers(self) -> int:
        return len(self.num_samples)

    @property
    def steps(self) -> int:
        return self.grads.shape[0]


def run_python(job: Job, servers: list[str], wire_dtype: str, grads: np.ndarray) -> Trajectory:
    """K Python clients, one thread each, push `grads` and record what they receive."""
    n, k = job.num_elements, job.num_workers
    points = np.zeros((job.steps + 1, k, n), np.float32)
    w, w_bf16 = np.zeros(n, np.float32), np.zeros(n, np.float32)
    errors: list[BaseException] = []
    point_dtypes: set[str] = set()

    def worker(rank: int) -> None:
        try:
            with gnc.Client(servers, rank, k, [("w", (n,))], job.num_samples[rank],
                            wire_dtype=wire_dtype, connect_timeout=30,
                            step_timeout=60) as client:
                client.offer(job.w0)
                x = np.empty(n, np.float32)
                for t in range(job.steps + 1):
                    step = client.receive_eval_point(x)
                    if step != t:
                        raise AssertionError(f"rank {rank} got step {step}, expected {t}")
                    points[t, rank] = x
                    point_dtypes.update(client.point_dtypes)
                    if t < job.steps:
                        client.push_gradient(grads[t, rank], job.num_samples[rank])
                if rank == 0:
                    client.pull(w, dtype="float32")
                    client.pull(w_bf16, dtype="bfloat16")
        except BaseException as e:  # reported by the test
            errors.append(e)

    gnc_testlib.run_all([lambda r=r: worker(r) for r in range(k)], TIMEOUT_S,
                        "the Python clients")
    if errors:
        raise errors[0]
    return Trajectory(points, w, w_bf16, point_dtypes)


def run_cpp(job: Job, servers: list[str], wire_dtype: str, grads: np.ndarray) -> Trajectory:
    """trajectory_client (K C++ clients) pushes `grads` and records what they receive."""
    with tempfile.TemporaryDirectory(prefix="gnc-trajectory-") as tmp:
        d = Path(tmp)
        job.w0.astype(np.float32).tofile(d / "w0")
        grads.astype(np.float32).tofile(d / "grads")
        result = subprocess.run(
            [ARGS.trajectory, f"--servers={','.join(servers)}",
             f"--num_workers={job.num_workers}", f"--num_elements={job.num_elements}",
             f"--steps={job.steps}", f"--num_samples={','.join(map(str, job.num_samples))}",
             f"--w0={d / 'w0'}", f"--grads={d / 'grads'}", f"--points={d / 'points'}",
             f"--w={d / 'w'}", f"--wire_dtype={wire_dtype}"],
            capture_output=True, text=True, timeout=TIMEOUT_S)
        if result.returncode != 0:
            raise AssertionError(f"trajectory_client failed ({result.returncode}):\n"
                                 f"{result.stderr}")
        points = np.fromfile(d / "points", np.float32).reshape(
            job.steps + 1, job.num_workers, job.num_elements)
        # The C++ client asks for its points in its wire dtype, and the shards send them so.
        return Trajectory(points, np.fromfile(d / "w", np.float32), point_dtypes={wire_dtype})


RUNNERS = {"python": run_python, "cpp": run_cpp}


class EquivalenceTest(unittest.TestCase):

    def run_job(self, job: Job, client: str, wire_dtype: str, grads: np.ndarray) -> Trajectory:
        """Runs one client kind against fresh shards of job's config."""
        shards = gnc_testlib.start_shards(self, ARGS.server, NUM_SHARDS, job.num_workers,
                                          [f"--mode={job.mode}", *job.server_flags])
        servers = [s.address for s in shards]
        trajectory = RUNNERS[client](job, servers, wire_dtype, grads)
        for shard in shards:  # every worker left: the shards exit by themselves
            self.assertEqual(shard.process.wait(timeout=30), 0, shard.log())
        return trajectory

    def as_received(self, want: Trajectory, got: Trajectory, wire_dtype: str) -> Trajectory:
        """want, with its evaluation points rounded to bfloat16 (by the independent
        rounding) when got's came as bfloat16. Points of one job come in one dtype:
        float32, or the client's wire dtype."""
        if not got.point_dtypes:  # the C++ client does not report it: float32
            return want
        self.assertEqual(len(got.point_dtypes), 1, f"points came as {got.point_dtypes}")
        self.assertLessEqual(got.point_dtypes, {"float32", wire_dtype})
        if got.point_dtypes == {"float32"}:
            return want
        return Trajectory(gnc_testlib.bf16_reference(want.points), want.w)

    def assert_same(self, got: Trajectory, want: Trajectory, what: str) -> None:
        for name, a, b in (("evaluation points", got.points, want.points), ("w", got.w, want.w)):
            same = a.view(np.uint32) == b.view(np.uint32)
            if not same.all():
                where = np.argwhere(~same)
                first = tuple(where[0])
                self.fail(f"{what}: {name} differ in {len(where)} elements; first at "
                          f"{first} (step, rank, index): {a[first]!r} != {b[first]!r}")

    def test_same_as_cpp_client(self) -> None:
        rng = np.random.default_rng(14)
        steps, num_samples = 4, [32, 48, 80]
        n = 700_001  # two shards of two chunks each, of different sizes, odd offset
        grads = rng.standard_normal((steps, len(num_samples), n), np.float32)
        # Exact ties between two bfloat16 values (1 + 2^-8 lies halfway between 1 and
        # 1 + 2^-7, 1 + 3 * 2^-8 between 1 + 2^-7 and 1 + 2^-6): to nearest even.
        ties = [1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), -(1 + 3 * 2**-8)]
        grads[:, :, :4] = np.float32(ties)
        w0 = rng.standard_normal(n, np.float32)
        for mode in ("none", "gnc", "isotropic"):
            with self.subTest(mode=mode):
                job = Job(mode, n, num_samples, w0, grads,
                          ["--lr=0.05", "--momentum=0.9", "--weight_decay=1e-3", "--seed=7"])
                reference = {
                    "float32": self.run_job(job, "cpp", "float32", grads),
                    "bfloat16": self.run_job(job, "cpp", "float32",
                                             gnc_testlib.bf16_reference(grads)),
                }
                # The modes really differ, and bfloat16 really rounds: the test can fail.
                self.assertFalse(np.array_equal(reference["float32"].w, reference["bfloat16"].w))
                for client, dtype in CLIENTS:
                    got = self.run_job(job, client, dtype, grads)
                    self.assert_same(got, self.as_received(reference[dtype], got, dtype),
                                     f"{client} {dtype} in mode {mode}")
                    if got.w_bf16 is not None:  # pulled as bfloat16: w rounded by the shard
                        self.assert_same(Trajectory(got.points, got.w_bf16),
                                         Trajectory(got.points, gnc_testlib.bf16_reference(got.w)),
                                         f"{client} pull as bfloat16 in mode {mode}")

    def test_numpy_reference(self) -> None:
        """Against a numpy simulation of the shards, in modes none and gnc, with every
        float32 operation of the merge exact: integer gradients (some exactly halfway
        between two bfloat16 values), equal batches (weights 1/2), lr 1/4, momentum 1/2."""
        rng = np.random.default_rng(9)
        steps, num_samples, n = 4, [16, 16], 600_001
        lr, momentum = 0.25, 0.5
        m = rng.integers(-100, 101, (steps, 2, n)).astype(np.float32)
        # Perturbations well below half a bfloat16 unit round back to m; m + 1/4 and
        # m + 3/4 with 64 <= m < 128 are ties (the unit there is 1/2).
        raw = m * (1 + rng.uniform(-2**-11, 2**-11, m.shape)).astype(np.float32)
        ties = (m >= 64) & (rng.random(m.shape) < 0.5)
        raw[ties] = m[ties] + np.where(rng.random(int(ties.sum())) < 0.5, 0.25, 0.75)
        rounded = gnc_testlib.bf16_reference(raw)
        w0 = rng.integers(-8, 9, n).astype(np.float32)
        for mode in ("none", "gnc"):
            with self.subTest(mode=mode):
                want = simulate(mode, w0, rounded, num_samples, lr, momentum)
                job = Job(mode, n, num_samples, w0, raw,
                          [f"--lr={lr}", f"--momentum={momentum}", "--weight_decay=0"])
                # The C++ client on the rounded gradients checks the simulation itself.
                for client, dtype in [("cpp", "float32")] + CLIENTS:
                    grads = raw if dtype == "bfloat16" else rounded
                    got = self.run_job(job, client, dtype, grads)
                    self.assert_same(got, self.as_received(want, got, dtype),
                                     f"{client} {dtype} in mode {mode} vs numpy")


def simulate(mode: str, w0: np.ndarray, grads: np.ndarray, num_samples: list[int],
             lr: float, momentum: float) -> Trajectory:
    """The shards' steps in float64 (exact for the inputs of test_numpy_reference):
    g = sum n_k g_k / sum n_k, v = mu v + g, w -= lr v, and in mode gnc
    x_k = w - lr (g_k - g); in mode none x_k = w."""
    steps, k, _ = grads.shape
    weights = np.array(num_samples, np.float64) / sum(num_samples)
    w, v = w0.astype(np.float64), np.zeros(w0.size)
    delta = np.zeros((k, w0.size))
    points = [np.broadcast_to(w, (k, w.size)).copy()]
    for t in range(steps):
        g = grads[t].astype(np.float64)
        mean = (weights[:, None] * g).sum(axis=0)
        v = momentum * v + mean
        w = w - lr * v
        if mode == "gnc":
            delta = -lr * (g - mean)
        points.append(w + delta)
    return Trajectory(np.array(points).astype(np.float32), w.astype(np.float32))


if __name__ == "__main__":
    gnc_testlib.main(UNITTEST_ARGV)
