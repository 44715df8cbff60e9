"""Error paths of the Python client against real gnc-server processes: a wrong layout,
a refused gradient, a late gradient, a shard that is killed, stalled or not there.
Each must end in a GncError with the server's code and the shard it came from, never
in a hang (every call runs under gnc_testlib.bounded, far above the client's own
deadlines), and a refusal must leave the model unchanged."""

from __future__ import annotations

import signal
import socket
import unittest

import gnc_testlib

ARGS, UNITTEST_ARGV = gnc_testlib.setup(
    ["numpy", "grpc", "google.protobuf", "gnc", "gnc.v1.gnc_pb2_grpc"])

import grpc  # noqa: E402  (after the skip check)
import numpy as np  # noqa: E402

import gnc  # noqa: E402

N = 1001
LAYOUT = [("w", (N,))]
HANG_S = 60.0  # a call still running after this long has hung


def bounded(fn, what: str = "the client call"):
    return gnc_testlib.bounded(HANG_S, what, fn)


class ClientErrorsTest(unittest.TestCase):

    def shards(self, num_workers: int, *flags: str, num_shards: int = 2) -> list[str]:
        shards = gnc_testlib.start_shards(self, ARGS.server, num_shards, num_workers,
                                          ["--mode=none", "--lr=0.5", "--momentum=0", *flags])
        self.processes = shards
        return [s.address for s in shards]

    def client(self, servers, rank: int, num_workers: int, layout=LAYOUT, **kwargs) -> gnc.Client:
        options = dict(local_batch_size=4, connect_timeout=10, step_timeout=20, rpc_timeout=10)
        options.update(kwargs)
        c = bounded(lambda: gnc.Client(servers, rank, num_workers, layout, **options), "join")
        self.addCleanup(c.close)
        return c

    def assert_error(self, error: gnc.GncError, code: grpc.StatusCode, shard: int,
                     address: str, text: str = "") -> None:
        self.assertEqual(error.code, code, error)
        self.assertEqual(error.shard, shard, error)
        self.assertEqual(error.address, address, error)
        self.assertIn(f"shard {shard} ({address})", str(error))
        self.assertIn(text, error.message)

    def test_wrong_layout_is_refused_by_the_shard(self) -> None:
        servers = self.shards(2)
        self.client(servers, 0, 2)
        for layout, text in (([("w", (N - 1,))], "layout"), ([("v", (N,))], "layout")):
            with self.assertRaises(gnc.GncError) as caught:
                self.client(servers, 1, 2, layout=layout)
            self.assert_error(caught.exception, grpc.StatusCode.FAILED_PRECONDITION, 0,
                              servers[0], text)
        with self.assertRaises(gnc.GncError) as caught:
            self.client(servers, 1, 3)  # K differs from the shards'
        self.assert_error(caught.exception, grpc.StatusCode.FAILED_PRECONDITION, 0, servers[0])

    def test_shards_in_the_wrong_order(self) -> None:
        servers = self.shards(1)
        with self.assertRaises(gnc.GncError) as caught:
            self.client(list(reversed(servers)), 0, 1)
        # What the client calls shard 0 is the process started as shard 1.
        self.assert_error(caught.exception, grpc.StatusCode.FAILED_PRECONDITION, 0, servers[1])

    def test_refused_gradient_names_the_shard_and_leaves_w(self) -> None:
        servers = self.shards(1)
        c = self.client(servers, 0, 1)
        w0 = np.linspace(-1, 1, N, dtype=np.float32)
        bounded(lambda: c.offer(w0))
        x = np.empty(N, np.float32)
        self.assertEqual(bounded(lambda: c.receive_eval_point(x)), 0)
        g = np.ones(N, np.float32)
        bad = g.copy()
        bad[N - 3] = np.nan  # in shard 1's range
        with self.assertRaises(gnc.GncError) as caught:
            bounded(lambda: c.push_gradient(bad, 4))
        self.assertNotIsInstance(caught.exception, gnc.LateGradient)
        self.assert_error(caught.exception, grpc.StatusCode.INVALID_ARGUMENT, 1, servers[1])
        # Shard 1 kept w0 bit for bit; shard 0 took the good half and moved on.
        w = np.empty(N, np.float32)
        bounded(lambda: c.pull(w))
        half = c.job.ranges[1].begin
        np.testing.assert_array_equal(w[half:].view(np.uint32), w0[half:].view(np.uint32))
        np.testing.assert_array_equal(w[:half], w0[:half] - np.float32(0.5))
        # A gradient still due: no new point yet; pushing it again completes the step.
        with self.assertRaises(gnc.GncError) as caught:
            bounded(lambda: c.receive_eval_point(x))
        self.assert_error(caught.exception, grpc.StatusCode.FAILED_PRECONDITION, 1, servers[1])
        bounded(lambda: c.push_gradient(g, 4))
        self.assertEqual(bounded(lambda: c.receive_eval_point(x)), 1)
        np.testing.assert_array_equal(x, w0 - np.float32(0.5))
        bounded(c.leave)

    def test_late_gradient(self) -> None:
        servers = self.shards(2, "--min_workers=1", "--straggler_timeout=1s")
        fast, slow = self.client(servers, 0, 2), self.client(servers, 1, 2)
        bounded(lambda: fast.offer(np.zeros(N, np.float32)))
        x = np.empty(N, np.float32)
        self.assertEqual(bounded(lambda: fast.receive_eval_point(x)), 0)
        self.assertEqual(bounded(lambda: slow.receive_eval_point(x)), 0)
        bounded(lambda: fast.push_gradient(np.ones(N, np.float32), 4))
        # The quorum of one completes step 0 without the slow worker.
        self.assertEqual(bounded(lambda: fast.receive_eval_point(x)), 1)
        with self.assertRaises(gnc.LateGradient) as caught:
            bounded(lambda: slow.push_gradient(np.ones(N, np.float32), 4))
        self.assert_error(caught.exception, grpc.StatusCode.ABORTED, 0, servers[0])
        self.assertEqual(bounded(lambda: slow.receive_eval_point(x)), 1)

    def test_killed_shard_ends_every_wait(self) -> None:
        """Worker A pushed step 0 to both shards; shard 1 dies for good. A's receive
        cannot complete (shard 0 waits for B, B cannot push to shard 1): the client
        must give up on shard 1 after reconnect_timeout, not wait for shard 0 until its
        step timeout."""
        servers = self.shards(2)
        a = self.client(servers, 0, 2, step_timeout=HANG_S * 2, reconnect_timeout=2)
        b = self.client(servers, 1, 2, step_timeout=HANG_S * 2, reconnect_timeout=2)
        bounded(lambda: a.offer(np.zeros(N, np.float32)))
        x = np.empty(N, np.float32)
        for c in (a, b):
            self.assertEqual(bounded(lambda: c.receive_eval_point(x)), 0)
        bounded(lambda: a.push_gradient(np.ones(N, np.float32), 4))
        self.processes[1].signal(signal.SIGKILL)
        for c, call in ((a, lambda: a.receive_eval_point(x)),
                        (b, lambda: b.push_gradient(np.ones(N, np.float32), 4))):
            with self.assertRaises(gnc.GncError) as caught:
                bounded(call)
            self.assert_error(caught.exception, grpc.StatusCode.UNAVAILABLE, 1, servers[1],
                              "did not answer within 2 s")

    def test_stalled_shard_ends_in_deadline_exceeded(self) -> None:
        servers = self.shards(1)
        c = self.client(servers, 0, 1, step_timeout=2)
        bounded(lambda: c.offer(np.zeros(N, np.float32)))
        x = np.empty(N, np.float32)
        bounded(lambda: c.receive_eval_point(x))
        self.processes[1].signal(signal.SIGSTOP)
        with self.assertRaises(gnc.GncError) as caught:
            bounded(lambda: c.push_gradient(np.ones(N, np.float32), 4))
        self.assert_error(caught.exception, grpc.StatusCode.DEADLINE_EXCEEDED, 1, servers[1],
                          "no progress within 2 s waiting for the shards to take the gradient")
        # What every shard waits for: shard 0 took the gradient and waits for the
        # next one; shard 1 does not answer.
        self.assertIn(f"shard 0 ({servers[0]}): at step 1, waiting", caught.exception.message)
        self.assertIn(f"shard 1 ({servers[1]}): unreachable", caught.exception.message)
        # Joining a stalled shard ends too.
        with self.assertRaises(gnc.GncError) as caught:
            self.client(servers, 0, 1, connect_timeout=2)
        self.assert_error(caught.exception, grpc.StatusCode.DEADLINE_EXCEEDED, 1, servers[1])
        self.processes[1].signal(signal.SIGCONT)

    def test_no_server_listening(self) -> None:
        with socket.socket() as s:  # a port that nothing listens on
            s.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{s.getsockname()[1]}"
        with self.assertRaises(gnc.GncError) as caught:
            self.client([address], 0, 1, connect_timeout=2)
        self.assert_error(caught.exception, grpc.StatusCode.DEADLINE_EXCEEDED, 0, address)

    def test_local_checks(self) -> None:
        servers = self.shards(1, num_shards=1)
        with self.assertRaises(ValueError):
            gnc.Client(servers, 1, 1, LAYOUT, 4)  # rank outside [0, K)
        with self.assertRaises(ValueError):
            gnc.Client(servers, 0, 1, LAYOUT, 4, wire_dtype="float16")
        with self.assertRaises(ValueError):
            gnc.Client(servers, 0, 1, LAYOUT, 4, step_timeout=float("inf"))
        with self.assertRaises(ValueError):
            gnc.Client(servers, 0, 1, LAYOUT, 4, reconnect_timeout=0)
        c = self.client(servers, 0, 1)
        with self.assertRaises(ValueError):
            c.offer(np.zeros(N + 1, np.float32))
        bounded(lambda: c.offer(np.zeros(N, np.float32)))
        with self.assertRaises(ValueError):
            c.receive_eval_point(np.zeros(N, np.float64))
        with self.assertRaises(gnc.GncError) as caught:
            c.push_gradient(np.zeros(N, np.float32), 4)
        self.assertEqual(caught.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIsNone(caught.exception.shard)  # a local check
        self.assertIn("no evaluation point received yet", caught.exception.message)
        bounded(c.leave)
        with self.assertRaises(gnc.GncError) as caught:
            c.receive_eval_point(np.zeros(N, np.float32))
        self.assertEqual(caught.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIsNone(caught.exception.shard)


if __name__ == "__main__":
    gnc_testlib.main(UNITTEST_ARGV)
