"""The Python client's transport security against real gnc-server processes that
require mutual TLS and a job token (certificates from deploy/local/make-certs.sh):
the client with the job's files trains; without the token, with a wrong one, with a
certificate of another CA or in plaintext it is refused, and the model stays as it
was. Skips (77) without openssl, grpc or numpy."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

import gnc_testlib


def _extra(parser) -> None:
    parser.add_argument("--source", required=True, help="repository root")


ARGS, UNITTEST_ARGV = gnc_testlib.setup(
    ["numpy", "grpc", "google.protobuf", "gnc", "gnc.v1.gnc_pb2_grpc"], extra=_extra)
if shutil.which("openssl") is None:
    print("SKIP: openssl not found (deploy/local/install-deps.sh --tests installs it)",
          flush=True)
    raise SystemExit(gnc_testlib.SKIP)

import grpc  # noqa: E402  (after the skip checks)
import numpy as np  # noqa: E402

import gnc  # noqa: E402

N = 1001
LAYOUT = [("w", (N,))]
LR = 0.5
HANG_S = 60.0


def bounded(fn, what: str = "the client call"):
    return gnc_testlib.bounded(HANG_S, what, fn)


def make_certs(folder: str) -> Path:
    subprocess.run([str(Path(ARGS.source) / "deploy/local/make-certs.sh"), folder], check=True,
                   stdout=subprocess.DEVNULL, timeout=60)
    return Path(folder)


class ClientSecurityTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls) -> None:
        cls._dirs = [tempfile.TemporaryDirectory(prefix="gnc-pytest-certs-")
                     for _ in range(2)]
        cls.job = make_certs(cls._dirs[0].name)
        cls.other = make_certs(cls._dirs[1].name)  # another CA, another token

    @classmethod
    def tearDownClass(cls) -> None:
        for d in cls._dirs:
            d.cleanup()

    def setUp(self) -> None:
        j = self.job
        shards = gnc_testlib.start_shards(
            self, ARGS.server, 2, 1,
            ["--mode=none", f"--lr={LR}", "--momentum=0", f"--tls_cert_file={j}/server.crt",
             f"--tls_key_file={j}/server.key", f"--tls_client_ca_file={j}/ca.crt",
             f"--auth_token_file={j}/token"])
        self.servers = [s.address for s in shards]

    def secure(self, **overrides) -> dict:
        j = self.job
        options = dict(tls_ca_file=str(j / "ca.crt"), tls_cert_file=str(j / "client.crt"),
                       tls_key_file=str(j / "client.key"), auth_token_file=str(j / "token"))
        options.update(overrides)
        return options

    def client(self, connect_timeout: float = 10, **security) -> gnc.Client:
        c = bounded(lambda: gnc.Client(self.servers, 0, 1, LAYOUT, local_batch_size=4,
                                       connect_timeout=connect_timeout, step_timeout=20,
                                       rpc_timeout=10, **security), "join")
        self.addCleanup(c.close)
        return c

    def test_job_files_train_and_outsiders_change_nothing(self) -> None:
        c = self.client(**self.secure())
        w0 = np.linspace(-1, 1, N, dtype=np.float32)
        bounded(lambda: c.offer(w0))
        x = np.empty(N, np.float32)
        self.assertEqual(bounded(lambda: c.receive_eval_point(x)), 0)
        np.testing.assert_array_equal(x, w0)
        g = np.full(N, 0.25, np.float32)
        bounded(lambda: c.push_gradient(g, 4))
        self.assertEqual(bounded(lambda: c.receive_eval_point(x)), 1)
        w1 = np.empty(N, np.float32)
        self.assertEqual(bounded(lambda: c.pull(w1)), 1)
        np.testing.assert_allclose(w1, w0 - LR * g, rtol=0, atol=1e-6)

        # Right certificate, no token or another job's: UNAUTHENTICATED at Join.
        for name, security in (("no token", self.secure(auth_token_file=None)),
                               ("wrong token",
                                self.secure(auth_token_file=str(self.other / "token")))):
            with self.subTest(name), self.assertRaises(gnc.GncError) as caught:
                self.client(**security)
            self.assertEqual(caught.exception.code, grpc.StatusCode.UNAUTHENTICATED,
                             caught.exception)
            self.assertEqual(caught.exception.shard, 0)
        # No TLS, or a client certificate of another CA: the handshake fails, and the
        # client gives up after connect_timeout.
        for name, security in (
                ("plaintext", dict(auth_token_file=str(self.job / "token"))),
                ("foreign client certificate",
                 self.secure(tls_cert_file=str(self.other / "client.crt"),
                             tls_key_file=str(self.other / "client.key"))),
                ("no client certificate", self.secure(tls_cert_file=None, tls_key_file=None)),
                ("server of another CA", self.secure(tls_ca_file=str(self.other / "ca.crt")))):
            with self.subTest(name), self.assertRaises(gnc.GncError) as caught:
                self.client(connect_timeout=2, **security)
            self.assertIn(caught.exception.code, (grpc.StatusCode.UNAVAILABLE,
                                                  grpc.StatusCode.DEADLINE_EXCEEDED),
                          caught.exception)

        # The model is what the job made of it.
        after = np.empty(N, np.float32)
        self.assertEqual(bounded(lambda: c.pull(after)), 1)
        np.testing.assert_array_equal(after, w1)

    def test_bad_files_are_value_errors_naming_the_file(self) -> None:
        missing = str(self.job / "no-such-token")
        with self.assertRaises(ValueError) as caught:
            gnc.Client(self.servers, 0, 1, LAYOUT, local_batch_size=4,
                       **self.secure(auth_token_file=missing))
        self.assertIn(missing, str(caught.exception))
        short = Path(gnc_testlib.temp_dir(self)) / "short"
        short.write_text("tooshort\n")
        with self.assertRaises(ValueError) as caught:
            gnc.Client(self.servers, 0, 1, LAYOUT, local_batch_size=4,
                       **self.secure(auth_token_file=str(short)))
        self.assertIn("at least", str(caught.exception))
        self.assertNotIn("tooshort", str(caught.exception))
        with self.assertRaises(ValueError):
            gnc.Client(self.servers, 0, 1, LAYOUT, local_batch_size=4,
                       **self.secure(tls_key_file=None))


if __name__ == "__main__":
    gnc_testlib.main(UNITTEST_ARGV)
