#!/usr/bin/env python3
"""Trains a small PyTorch CNN on Fashion-MNIST as one worker of a gnc job.

Rank k of K trains on the k-th contiguous slice of the 60 000 training images,
reshuffled every epoch from --seed; each step's batch follows from (epoch, position),
so a step skipped by a straggler timeout costs nothing but that step, and after a
shard is restored from its checkpoint (the client rewinds the job and receive()
returns the older step) the job resumes on the very batches it ran then. The evaluating
worker (rank 0 unless --evaluate says otherwise) tests the job's unperturbed parameters
on the 10 000 test images after every epoch and at the end, and prints

    final test accuracy 0.8712 loss 0.3581 after 936 steps in 41.0 s

Data: the IDX gzip files of Debian's dataset-fashion-mnist (read with numpy and gzip).
Run K of these against S local shards with deploy/local/launch.sh:

    deploy/local/launch.sh --workers 2 --batch_size 64 --epochs 2 --lr 0.05 \\
      --worker_cmd "python3 examples/fashion_mnist_torch.py"

launch.sh passes --servers, --rank, --num_workers, --batch_size, --epochs, --steps,
--seed, --train_limit, --test_limit and --data_dir, and puts the build tree's gnc
package on PYTHONPATH. Exit status: 0 done, 1 runtime error, 2 bad flags.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import gnc
import gnc.torch

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
# Mean and standard deviation of Fashion-MNIST's training pixels (in [0, 1]).
PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530


def read_idx(path: Path, limit: int = 0) -> np.ndarray:
    """An IDX file (gzip or plain) as a uint8 array of its shape, first `limit` items
    if limit > 0. Raises ValueError naming the file when it is not a uint8 IDX file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    start = 4 + 4 * ndim
    if len(data) - start != int(np.prod(dims)):
        raise ValueError(f"{path}: holds {len(data) - start} bytes of data, its header "
                         f"says {dims}")
    array = np.frombuffer(data, np.uint8, offset=start).reshape(dims)
    return array[:limit] if limit > 0 else array


def load(data_dir: Path, images: str, labels: str, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = read_idx(data_dir / images, limit).astype(np.float32)
    y = read_idx(data_dir / labels, limit).astype(np.int64)
    if len(x) != len(y):
        raise ValueError(f"{images} has {len(x)} images, {labels} {len(y)} labels")
    x = (x / 255.0 - PIXEL_MEAN) / PIXEL_STD
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)


class SmallCnn(nn.Module):
    """conv3x3(8) - pool - conv3x3(16) - pool - fc(64) - fc(10), ReLU: 52 138 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


@torch.no_grad()
def test(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of model on (x, y)."""
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), 1000):
        logits = model(x[i:i + 1000])
        loss += F.cross_entropy(logits, y[i:i + 1000], reduction="sum").item()
        correct += (logits.argmax(1) == y[i:i + 1000]).sum().item()
    model.train()
    return correct / len(x), loss / len(x)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="One PyTorch worker of a gnc job (Fashion-MNIST).")
    p.add_argument("--servers", required=True, help="host:port of the shards, in order")
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--num_workers", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=64, help="per worker")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=0, help="total steps; overrides --epochs")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train_limit", type=int, default=0, help="first N training images (0: all)")
    p.add_argument("--test_limit", type=int, default=0, help="first N test images (0: all)")
    p.add_argument("--data_dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--evaluate", choices=["auto", "true", "false"], default="auto",
                   help="test w after every epoch (auto: rank 0 does)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: cores / K)")
    p.add_argument("--wire_dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--connect_timeout", type=float, default=60.0, help="seconds")
    p.add_argument("--reconnect_timeout", type=float, default=120.0,
                   help="seconds to reconnect to a shard whose stream broke")
    p.add_argument("--step_timeout", type=float, default=600.0,
                   help="seconds without progress before giving up")
    p.add_argument("--progress_interval", type=float, default=5.0, help="seconds")
    p.add_argument("--tls_ca_file", help="PEM CA of the shards' certificates (TLS)")
    p.add_argument("--tls_cert_file", help="PEM certificate of this worker (mutual TLS)")
    p.add_argument("--tls_key_file", help="PEM key of --tls_cert_file")
    p.add_argument("--auth_token_file", help="file holding the job token")
    args = p.parse_args(argv)
    if not 0 <= args.rank < args.num_workers:
        p.error(f"--rank {args.rank} outside [0, {args.num_workers})")
    if args.batch_size < 1 or args.epochs < 1 or args.steps < 0:
        p.error("--batch_size and --epochs must be >= 1, --steps >= 0")
    return args


def run(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)  # every rank builds the same w0; the first offer wins
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // args.num_workers))
    evaluate = args.evaluate == "true" or (args.evaluate == "auto" and args.rank == 0)

    train_x, train_y = load(args.data_dir, TRAIN_IMAGES, TRAIN_LABELS, args.train_limit)
    slice_size = len(train_x) // args.num_workers
    steps_per_epoch = slice_size // args.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {args.batch_size} exceeds the {slice_size} images "
                         "per worker")
    first = args.rank * slice_size
    train_x, train_y = train_x[first:first + slice_size], train_y[first:first + slice_size]
    total = args.steps if args.steps > 0 else args.epochs * steps_per_epoch
    num_epochs = -(-total // steps_per_epoch)
    test_x, test_y = load(args.data_dir, TEST_IMAGES, TEST_LABELS, args.test_limit) \
        if evaluate else (None, None)

    model = SmallCnn()
    eval_model = copy.deepcopy(model)
    servers = args.servers.split(",")
    with gnc.Client(servers, args.rank, args.num_workers, gnc.torch.layout_of(model),
                    local_batch_size=args.batch_size, wire_dtype=args.wire_dtype,
                    connect_timeout=args.connect_timeout,
                    reconnect_timeout=args.reconnect_timeout,
                    step_timeout=args.step_timeout, tls_ca_file=args.tls_ca_file,
                    tls_cert_file=args.tls_cert_file, tls_key_file=args.tls_key_file,
                    auth_token_file=args.auth_token_file) as client:
        if client.job.total_steps and client.job.total_steps != total:
            raise ValueError(f"the servers run {client.job.total_steps} steps "
                             f"(--total_steps), this worker {total}")
        print(f"{total} steps ({num_epochs} epochs x {steps_per_epoch} steps), "
              f"batch {args.batch_size}, mode {client.job.mode}, {len(servers)} shards, "
              f"{client.num_elements} parameters", flush=True)
        worker = gnc.torch.ModelWorker(client, model)
        worker.offer()
        start = last_report = time.monotonic()
        order, order_epoch = None, -1
        evaluated_epochs, late, losses, samples = 0, 0, [], 0
        while (step := worker.receive()) < total:
            epoch = step // steps_per_epoch
            if evaluate and epoch > evaluated_epochs:
                # This worker has not pushed for `step`: w is still the previous epoch's end.
                at = worker.pull(eval_model)
                accuracy, loss = test(eval_model, test_x, test_y)
                evaluated_epochs = epoch
                print(f"epoch {epoch}/{num_epochs} test accuracy {accuracy:.4f} "
                      f"loss {loss:.4f} at step {at}", flush=True)
            if epoch != order_epoch:
                rng = np.random.default_rng([args.seed, epoch, args.rank])
                order, order_epoch = torch.from_numpy(rng.permutation(slice_size)), epoch
            rows = order[(step % steps_per_epoch) * args.batch_size:][:args.batch_size]
            model.zero_grad()
            loss = F.cross_entropy(model(train_x[rows]), train_y[rows])
            loss.backward()
            if worker.push(args.batch_size):
                samples += args.batch_size
            else:
                late += 1
            losses.append(loss.item())
            now = time.monotonic()
            if now - last_report >= args.progress_interval:
                print(f"worker {args.rank} step {step + 1}/{total} epoch {epoch + 1}/"
                      f"{num_epochs} loss {np.mean(losses):.4f} samples/s {samples / (now - last_report):.1f} "
                      f"late {late}", flush=True)
                last_report, losses, samples = now, [], 0
        seconds = time.monotonic() - start
        if evaluate:
            at = worker.pull(eval_model)
            accuracy, loss = test(eval_model, test_x, test_y)
            print(f"final test accuracy {accuracy:.4f} loss {loss:.4f} after {at} "
                  f"steps in {seconds:.1f} s", flush=True)
        print(f"worker {args.rank} done: {late} late steps, {seconds:.1f} s", flush=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # The client logs its reconnects and rewinds.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    try:
        run(args)
    except (gnc.GncError, ValueError, OSError) as e:
        print(f"fashion_mnist_torch: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
