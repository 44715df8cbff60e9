"""What the Python client tests share: the command line, the skip rule, real
gnc-server processes on 127.0.0.1 and bounded waits.

Every test program takes --server (the gnc-server binary) and --pythonpath (the
build tree's package root) before unittest's own arguments, and exits with SKIP (77)
and the reason when a Python module it needs is missing. Import numpy-using helpers
(bf16_reference) only after setup().
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

SKIP = 77
_T = TypeVar("_T")


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv` run so that the child is killed when this process dies (a test killed on
    its timeout must not leave shards behind): under util-linux's setpriv --pdeathsig,
    or unchanged where that is not at hand. Only from the main thread: the kernel ties
    the signal to the thread that started the child.

    Not a preexec_fn: with one, Python forks with fork() rather than vfork(), so gRPC's
    fork handler runs; it waits for gRPC's threads to go idle, and once this process's
    channels had met a killed shard that wait was seen never to end."""
    setpriv = shutil.which("setpriv")
    if not sys.platform.startswith("linux") or setpriv is None or \
            threading.current_thread() is not threading.main_thread():
        return list(argv)
    return [setpriv, "--pdeathsig", "KILL", "--", *argv]


def setup(modules: Sequence[str], extra: Callable[[argparse.ArgumentParser], None] = None,
          tools: Sequence[str] = ()) -> tuple[argparse.Namespace, list[str]]:
    """Parses the shared flags (plus those `extra` adds), puts the package on sys.path
    and exits with SKIP when one of `modules` cannot be imported or one of `tools`
    (modules run in a subprocess, such as pip) is not installed. Returns the flags and
    the arguments left for unittest."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", help="gnc-server binary")
    parser.add_argument("--pythonpath", help="root of the gnc package (build tree)")
    if extra is not None:
        extra(parser)
    args, rest = parser.parse_known_args()
    if args.pythonpath:
        sys.path.insert(0, args.pythonpath)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (args.pythonpath, os.environ.get("PYTHONPATH")) if p)
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            print(f"SKIP: cannot import {module} ({e}); deploy/local/install-deps.sh --tests "
                  "installs it", flush=True)
            sys.exit(SKIP)
    for tool in tools:
        if importlib.util.find_spec(tool) is None:
            print(f"SKIP: Python module {tool} is not installed", flush=True)
            sys.exit(SKIP)
    return args, [sys.argv[0], *rest]


def main(argv: list[str]) -> None:
    """Runs the unittest cases of __main__, verbosely."""
    unittest.main(module="__main__", argv=argv, verbosity=2)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A real gnc-server child on 127.0.0.1, at `port` or at a port it picked itself.
    Stopped (SIGTERM, then SIGKILL) by stop(); restart() starts it again with the same
    flags at the same address (all runs log to log_path); every wait is bounded."""

    def __init__(self, binary: str, flags: Sequence[str], start_timeout: float = 20.0,
                 port: int = 0):
        self._dir = tempfile.TemporaryDirectory(prefix="gnc-pytest-")
        self._port_file = Path(self._dir.name) / "port"
        self.log_path = Path(self._dir.name) / "server.log"
        self._log = open(self.log_path, "ab")
        self._argv = [binary, "--address=127.0.0.1", f"--port={port}",
                      f"--port_file={self._port_file}", *flags]
        self._start_timeout = start_timeout
        self._start()

    def _start(self) -> None:
        self._port_file.unlink(missing_ok=True)
        if self._log.closed:
            self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(die_with_parent(self._argv), stdout=self._log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self._start_timeout
        while not (self._port_file.exists() and self._port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{' '.join(self._argv)} did not start listening within "
                                   f"{self._start_timeout:g} s:\n{self.log()}")
            time.sleep(0.02)
        self.address = f"127.0.0.1:{self._port_file.read_text().strip()}"

    def restart(self) -> None:
        """Starts the server again, same flags, same port; REQUIRES: it has exited."""
        if self.process.poll() is None:
            raise RuntimeError("restart() of a server that still runs")
        address = self.address
        self._start()
        if self.address != address:
            raise RuntimeError(f"restarted at {self.address}, not {address}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        """Sends sig; for SIGSTOP, returns once every thread is stopped (kill(2) only
        queues the stop: a thread that is running finishes what it does first)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            if sig == signal.SIGSTOP:
                self._wait_stopped(deadline=time.monotonic() + 10)

    def _wait_stopped(self, deadline: float) -> None:
        tasks = Path(f"/proc/{self.process.pid}/task")
        while time.monotonic() < deadline:
            try:
                states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0]
                          for t in tasks.iterdir()]
            except OSError:
                return  # no /proc here, or the process is gone
            if all(state in ("T", "t") for state in states):
                return
            time.sleep(0.01)
        raise RuntimeError(f"pid {self.process.pid} not stopped 10 s after SIGSTOP")

    def stop(self, grace: float = 10.0) -> Optional[int]:
        """SIGTERM, SIGKILL after `grace` seconds; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a stopped process cannot drain
            self.process.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=grace)
        self._log.close()
        return self.process.returncode

    def cleanup(self) -> None:
        self.stop()
        self._dir.cleanup()


def start_shards(test: unittest.TestCase, binary: str, num_shards: int, num_workers: int,
                 flags: Sequence[str] = (), fixed_ports: bool = False) -> list[ServerProcess]:
    """Starts S shards of one job; the test case stops them when it ends. With
    fixed_ports each gets a free port chosen beforehand, so that it can restart()."""
    shards = []
    for s in range(num_shards):
        shard = ServerProcess(binary, [f"--shard_index={s}", f"--num_shards={num_shards}",
                                       f"--num_workers={num_workers}", *flags],
                              port=free_port() if fixed_ports else 0)
        test.addCleanup(shard.cleanup)
        shards.append(shard)
    return shards


def temp_dir(test: unittest.TestCase) -> str:
    """A new empty folder that is removed when the test case ends."""
    folder = tempfile.TemporaryDirectory(prefix="gnc-pytest-")
    test.addCleanup(folder.cleanup)
    return folder.name


def bounded(seconds: float, what: str, fn: Callable[[], _T]) -> _T:
    """Runs fn on a thread and returns its result or raises its exception; fails with
    AssertionError("... hung") if it has not finished after `seconds`."""
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as e:  # handed to the caller
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise AssertionError(f"{what} did not return within {seconds:g} s: it hung")
    if "error" in result:
        raise result["error"]
    return result.get("value")


def run_all(fns: Sequence[Callable[[], None]], seconds: float, what: str) -> None:
    """Runs every fn on a thread of its own, all at once; fails with
    AssertionError("... hung") if any of them has not finished after `seconds`."""
    threads = [threading.Thread(target=fn, daemon=True) for fn in fns]
    for t in threads:
        t.start()
    deadline = time.monotonic() + seconds
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0))
    if any(t.is_alive() for t in threads):
        raise AssertionError(f"{what} did not finish within {seconds:g} s: they hung")


def bf16_reference(x):
    """x rounded to bfloat16 (as float32 values), from first principles: of the two
    bfloat16 neighbours of x (truncated, and one unit further from zero), the nearer
    one; on a tie, the one whose last kept bit is 0. For finite x below the largest
    bfloat16 in magnitude (the NaN and overflow rules are not modelled)."""
    import numpy as np

    x = np.asarray(x, np.float32)
    low_bits = x.view(np.uint32) & np.uint32(0xFFFF0000)
    low = low_bits.view(np.float32).astype(np.float64)
    high = (low_bits + np.uint32(0x10000)).view(np.float32).astype(np.float64)
    exact = x.astype(np.float64)
    to_low, to_high = np.abs(exact - low), np.abs(high - exact)
    low_is_odd = (low_bits >> np.uint32(16)) & np.uint32(1) == 1
    take_high = (to_high < to_low) | ((to_high == to_low) & low_is_odd)
    return np.where(take_high, high, low).astype(np.float32)
