"""examples/fashion_mnist_torch.py, two PyTorch workers started by
deploy/local/launch.sh --worker_cmd against two local shards in mode gnc, in a short
configuration (2 epochs, batch 64 per worker): every worker must finish, the job must
run its 936 steps, and the evaluator's final test accuracy must reach MIN_ACCURACY."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unittest
from pathlib import Path

import gnc_testlib

ARGS, UNITTEST_ARGV = gnc_testlib.setup(
    ["numpy", "grpc", "google.protobuf", "gnc", "gnc.v1.gnc_pb2_grpc", "torch"],
    lambda p: (p.add_argument("--source", required=True, help="the gnc checkout"),
               p.add_argument("--data_dir", default="/usr/share/datasets/fashion-mnist")))

MIN_ACCURACY = 0.85
STEPS = 2 * (60000 // 2 // 64)  # epochs x per-worker slice / batch
LIMIT_S = 500  # launch.sh stops everything after this long


class TorchExampleTest(unittest.TestCase):

    def test_trains_to_accuracy(self) -> None:
        if not Path(ARGS.data_dir, "train-images-idx3-ubyte.gz").exists():
            self.skipTest(f"no Fashion-MNIST under {ARGS.data_dir} (dataset-fashion-mnist)")
        source = Path(ARGS.source).resolve()
        env = dict(os.environ, GNC_SERVER_BIN=str(Path(ARGS.server).resolve()))
        command = [
            "bash", str(source / "deploy/local/launch.sh"), "--shards", "2", "--workers", "2",
            "--mode", "gnc", "--epochs", "2", "--batch_size", "64", "--lr", "0.05",
            "--server_metrics_port", "0", "--data_dir", ARGS.data_dir,
            "--build_dir", str(Path(ARGS.pythonpath).resolve().parent), "--timeout", str(LIMIT_S),
            "--worker_cmd", f"{sys.executable} {source / 'examples/fashion_mnist_torch.py'}",
        ]
        run = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=LIMIT_S + 60, env=env, cwd=source)
        print(run.stdout[-3000:])
        self.assertEqual(run.returncode, 0, "launch.sh failed")
        self.assertIn("[launch] done: all 2 workers succeeded", run.stdout)
        final = re.findall(r"\[worker 0\] final test accuracy ([0-9.]+) loss [0-9.]+ "
                           r"after (\d+) steps", run.stdout)
        self.assertEqual(len(final), 1, "the evaluator reported no final test accuracy")
        accuracy, steps = float(final[0][0]), int(final[0][1])
        self.assertEqual(steps, STEPS)
        self.assertGreaterEqual(accuracy, MIN_ACCURACY)
        print(f"final test accuracy {accuracy:.4f} after {steps} steps")


if __name__ == "__main__":
    gnc_testlib.main(UNITTEST_ARGV)
