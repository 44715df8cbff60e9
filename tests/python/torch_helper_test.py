"""gnc.torch against a real two-shard job: the layout follows named_parameters(), w0
comes from the model, the evaluation point lands in the right parameters, the pushed
gradients in the right places (one SGD step on the shards equals the same step in
torch, bit for bit), and pull() loads w into another model."""

from __future__ import annotations

import copy
import unittest

import gnc_testlib

ARGS, UNITTEST_ARGV = gnc_testlib.setup(
    ["numpy", "grpc", "google.protobuf", "gnc", "gnc.v1.gnc_pb2_grpc", "torch"])

import torch  # noqa: E402  (after the skip check)
from torch import nn  # noqa: E402

import gnc  # noqa: E402
import gnc.torch  # noqa: E402

LR = 0.5


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 5)
        self.unused = nn.Parameter(torch.ones(2, 2))  # gets no gradient


def forward(net: Net, x: torch.Tensor) -> torch.Tensor:
    return net.fc(torch.relu(net.conv(x)).flatten(1))


def state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in net.named_parameters()}


class TorchHelperTest(unittest.TestCase):

    def assert_params(self, net: nn.Module, want: dict[str, torch.Tensor]) -> None:
        for name, p in net.named_parameters():
            self.assertTrue(torch.equal(p.detach().view(torch.int32),
                                        want[name].view(torch.int32)), name)

    def test_one_step(self) -> None:
        torch.manual_seed(5)
        net = Net()
        layout = gnc.torch.layout_of(net)
        self.assertEqual([t.name for t in layout.tensors],
                         [name for name, _ in net.named_parameters()])
        self.assertEqual(layout.tensors[3].name, "fc.weight")
        self.assertEqual(layout.tensors[3].shape, (5, 48))
        shards = gnc_testlib.start_shards(self, ARGS.server, 2, 1,
                                          ["--mode=none", f"--lr={LR}", "--momentum=0"])
        client = gnc.Client([s.address for s in shards], 0, 1, layout, local_batch_size=8,
                            connect_timeout=20, step_timeout=20, rpc_timeout=20)
        self.addCleanup(client.close)
        worker = gnc.torch.ModelWorker(client, net)
        w0 = state(net)
        worker.offer()
        with torch.no_grad():
            for p in net.parameters():
                p.zero_()  # whatever the model holds, receive() loads the job's point
        self.assertEqual(worker.receive(), 0)
        self.assert_params(net, w0)

        net.zero_grad()
        x = torch.randn(8, 1, 6, 6)
        forward(net, x).square().mean().backward()
        want = {name: (p - LR * p.grad if p.grad is not None else p).detach()
                for name, p in net.named_parameters()}
        self.assertTrue(worker.push(8))
        self.assertEqual(worker.receive(), 1)
        self.assert_params(net, want)

        other = copy.deepcopy(Net())
        self.assertEqual(worker.pull(other), 1)
        self.assert_params(other, want)
        with self.assertRaises(ValueError):
            gnc.torch.ModelWorker(client, nn.Linear(2, 2))
        client.leave()


if __name__ == "__main__":
    gnc_testlib.main(UNITTEST_ARGV)
