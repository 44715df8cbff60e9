#!/usr/bin/env python3
"""python_round_bench: the Python client's round against the C++ client's, on this
machine, in one run. K Python worker processes (gnc.Client) against S real gnc-server
processes on loopback; one round = push an N-float gradient, then receive the N-float
evaluation point, as in gnc_round_bench, which runs right after (or before: the order
alternates over --repeats) with the same S, K, N and mode as the yardstick.

    tests/bench/python_round_bench.py --server build/server/gnc-server \\
      --cpp_bench build/tests/bench/gnc_round_bench --pythonpath build/python \\
      --servers 2 --workers 4 --mfloats 4 --rounds 10 --repeats 3

Prints each run's median round and, at the end, the medians over runs and their ratio.
Exit status 0, 1 if a run failed, 77 if the gnc package cannot be imported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))  # gnc_testlib


def worker(args: argparse.Namespace) -> None:
    """One Python worker: prints its round times (seconds) as JSON."""
    import numpy as np

    import gnc

    n = args.mfloats << 20
    with gnc.Client(args.addresses.split(","), args.rank, args.workers, [("params", (n,))],
                    local_batch_size=64, wire_dtype=args.wire_dtype, connect_timeout=60,
                    step_timeout=300) as client:
        x = np.zeros(n, np.float32)
        g = np.full(n, 1e-3, np.float32)
        client.offer(x)
        times = []
        # Round r: push the gradient of step r-1 (none before the first), receive x_r.
        for r in range(args.rounds + 1):
            t0 = time.perf_counter()
            if r > 0:
                client.push_gradient(g, 64)
            client.receive_eval_point(x)
            if r > 0:
                times.append(time.perf_counter() - t0)
    print(json.dumps(times))


def python_round(args: argparse.Namespace) -> float:
    """Median round (seconds) over every round of every Python worker."""
    import gnc_testlib

    flags = [f"--num_shards={args.servers}", f"--num_workers={args.workers}",
             f"--mode={args.mode}", "--lr=1e-6"]
    shards = [gnc_testlib.ServerProcess(args.server, [f"--shard_index={s}", *flags])
              for s in range(args.servers)]
    try:
        addresses = ",".join(s.address for s in shards)
        env = dict(os.environ)
        if args.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(Path(args.pythonpath).resolve()), env.get("PYTHONPATH")) if p)
        with tempfile.TemporaryDirectory(prefix="gnc-pybench-") as tmp:
            procs = []
            for rank in range(args.workers):
                out = open(Path(tmp) / f"worker-{rank}.out", "w+")
                procs.append((out, subprocess.Popen(gnc_testlib.die_with_parent(
                    [sys.executable, __file__, "--worker", f"--addresses={addresses}",
                     f"--rank={rank}", f"--workers={args.workers}",
                     f"--mfloats={args.mfloats}", f"--rounds={args.rounds}",
                     f"--wire_dtype={args.wire_dtype}"]), stdout=out, env=env)))
            times = []
            for out, proc in procs:
                if proc.wait(timeout=args.timeout) != 0:
                    raise RuntimeError(f"a Python worker failed with status {proc.returncode}")
                out.seek(0)
                times += json.loads(out.read())
                out.close()
        return statistics.median(times)
    finally:
        for shard in shards:
            shard.cleanup()


def cpp_round(args: argparse.Namespace) -> float:
    """Median round (seconds) of gnc_round_bench with the same settings."""
    run = subprocess.run(
        [args.cpp_bench, f"--servers={args.servers}", f"--workers={args.workers}",
         f"--mfloats={args.mfloats}", f"--rounds={args.rounds}", f"--mode={args.mode}"],
        capture_output=True, text=True, timeout=args.timeout)
    match = re.search(r"median round ([0-9.]+) ms", run.stdout)
    if run.returncode != 0 or not match:
        raise RuntimeError(f"gnc_round_bench failed ({run.returncode}):\n{run.stderr}")
    return float(match.group(1)) / 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", help="gnc-server binary")
    p.add_argument("--cpp_bench", help="gnc_round_bench binary (omit: Python only)")
    p.add_argument("--pythonpath", help="root of the gnc package (build tree)")
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--mfloats", type=int, default=4, help="N in Mi floats")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--mode", default="none")
    p.add_argument("--wire_dtype", default="float32", help="of the Python client")
    p.add_argument("--timeout", type=float, default=600, help="seconds per run")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--addresses", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    if not args.server:
        p.error("--server is required")
    if args.pythonpath:
        sys.path.insert(0, str(Path(args.pythonpath).resolve()))
    try:
        import gnc.v1.gnc_pb2_grpc  # noqa: F401  (grpc, protobuf and numpy with it)
    except ImportError as e:
        print(f"SKIP: cannot import the gnc package ({e})")
        return 77
    n = args.mfloats << 20
    print(f"python_round_bench: S={args.servers} K={args.workers} N={n} floats "
          f"mode={args.mode} rounds={args.rounds} python wire={args.wire_dtype}", flush=True)
    py, cpp = [], []
    try:
        for i in range(args.repeats):
            order = ("python", "cpp") if i % 2 == 0 else ("cpp", "python")
            for kind in order:
                if kind == "python":
                    py.append(python_round(args))
                    print(f"  run {i + 1}: Python client median round {py[-1] * 1e3:.1f} ms",
                          flush=True)
                elif args.cpp_bench:
                    cpp.append(cpp_round(args))
                    print(f"  run {i + 1}: C++ client median round {cpp[-1] * 1e3:.1f} ms",
                          flush=True)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"python_round_bench: {e}", file=sys.stderr)
        return 1
    line = f"Python client round {statistics.median(py) * 1e3:.1f} ms"
    if cpp:
        c = statistics.median(cpp)
        line += (f"; C++ client {c * 1e3:.1f} ms; ratio "
                 f"{statistics.median(py) / c:.2f}x (median of {args.repeats} runs each)")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
