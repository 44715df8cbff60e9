"""worker/python installs with `pip install --no-deps --no-build-isolation` (no
registry): into a fresh virtual environment that sees Debian's python3-* packages, the
stubs generated from proto/gnc.proto on the way; the installed package, imported from
outside the source and build trees, then trains a step against a real gnc-server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import gnc_testlib

ARGS, UNITTEST_ARGV = gnc_testlib.setup(
    ["numpy", "grpc", "google.protobuf"],
    lambda p: p.add_argument("--source", required=True, help="the gnc checkout"),
    tools=["venv", "pip", "setuptools", "wheel"])

# Run by the installed package, not the build tree's: one step of a one-worker job.
JOB = """
import sys
import numpy as np
import gnc
from gnc.v1 import gnc_pb2_grpc
with gnc.Client([sys.argv[1]], 0, 1, [("w", (5,))], local_batch_size=2) as c:
    c.offer(np.arange(5, dtype=np.float32))
    x = np.empty(5, np.float32)
    assert c.receive_eval_point(x) == 0, x
    c.push_gradient(np.ones(5, np.float32), 2)
    assert c.receive_eval_point(x) == 1
print(gnc.__file__, gnc_pb2_grpc.__file__, ",".join(str(v) for v in x))
"""


class PipInstallTest(unittest.TestCase):

    def test_install_and_train(self) -> None:
        source = Path(ARGS.source)
        with tempfile.TemporaryDirectory(prefix="gnc-pip-") as tmp:
            tree = Path(tmp) / "gnc"
            shutil.copytree(source / "worker" / "python", tree / "worker" / "python",
                            ignore=shutil.ignore_patterns("build", "*.egg-info"))
            shutil.copytree(source / "proto", tree / "proto")
            venv = Path(tmp) / "venv"
            subprocess.run([sys.executable, "-m", "venv", "--system-site-packages",
                            "--without-pip", str(venv)], check=True, timeout=60)
            python = venv / "bin" / "python"
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            install = subprocess.run(
                [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                 "--no-index", str(tree / "worker" / "python")],
                capture_output=True, text=True, timeout=120, env=env)
            self.assertEqual(install.returncode, 0, install.stdout + install.stderr)

            shard = gnc_testlib.ServerProcess(ARGS.server, ["--mode=none", "--lr=0.5",
                                                            "--momentum=0"])
            self.addCleanup(shard.cleanup)
            run = subprocess.run([python, "-c", JOB, shard.address], capture_output=True,
                                 text=True, timeout=60, env=env, cwd=tmp)
            self.assertEqual(run.returncode, 0, run.stderr)
            gnc_init, stubs, x = run.stdout.split()
            site = str(venv / "lib")
            self.assertTrue(gnc_init.startswith(site), gnc_init)
            self.assertTrue(stubs.startswith(site), stubs)
            self.assertEqual(x, "-0.5,0.5,1.5,2.5,3.5")  # w0 - lr * g


if __name__ == "__main__":
    gnc_testlib.main(UNITTEST_ARGV)
