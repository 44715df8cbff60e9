"""PyTorch models against gnc: the layout from model.named_parameters(), evaluation
points loaded into the model before the forward pass, gradients flattened and pushed,
w pulled into the model for evaluation.

    model = Net()
    with gnc.Client(servers, rank, num_workers, gnc.torch.layout_of(model), batch) as client:
        worker = gnc.torch.ModelWorker(client, model)
        worker.offer()                              # this model's init as w0
        while worker.receive() < total_steps:       # x_k into the model
            model.zero_grad()
            loss_fn(model(inputs), targets).backward()
            worker.push(len(inputs))                # False: late or rewound, carry on
        worker.pull()                               # w into the model, to evaluate

Only parameters travel (in named_parameters() order); buffers such as BatchNorm's
running statistics stay local to each worker. Parameters may live on any device and
in any floating dtype: values are copied through float32 host buffers.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from gnc.client import Client
from gnc.errors import LateGradient
from gnc.layout import Layout


def layout_of(model: torch.nn.Module) -> Layout:
    """The gnc layout of model's parameters, named and ordered as named_parameters()."""
    return Layout([(name, tuple(p.shape)) for name, p in model.named_parameters()])


def flat_parameters(model: torch.nn.Module) -> np.ndarray:
    """A new float32 vector holding every parameter, in layout order."""
    return torch.cat([p.detach().reshape(-1).to("cpu", torch.float32)
                      for p in model.parameters()]).numpy()


class ModelWorker:
    """Binds a torch model to a gnc Client: moves the client's flat vectors in and out
    of the model's parameters. Thread-compatible, like the Client.

    Raises ValueError when the model's parameters differ from the client's layout.
    """

    def __init__(self, client: Client, model: torch.nn.Module):
        if layout_of(model) != client.layout:
            raise ValueError(f"the model's parameters {layout_of(model)} differ from the "
                             f"client's layout {client.layout}")
        self.client = client
        self.model = model
        self._params = list(model.parameters())
        n = client.num_elements
        self._x = np.empty(n, np.float32)
        self._g = np.empty(n, np.float32)
        self._x_views = self._views(torch.from_numpy(self._x))
        self._g_views = self._views(torch.from_numpy(self._g))
        self._w: Optional[np.ndarray] = None  # pulled parameters, allocated on first use

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        views, offset = [], 0
        for p in self._params:
            views.append(flat[offset:offset + p.numel()].view(p.shape))
            offset += p.numel()
        return views

    def offer(self) -> None:
        """Offers the model's current parameters as w0 (the first offer per shard wins;
        call receive() next to train from the job's w0)."""
        self.client.offer(flat_parameters(self.model))

    def receive(self) -> int:
        """Receives this worker's evaluation point x_k and loads it into the model's
        parameters. Returns the step. Raises GncError as Client.receive_eval_point."""
        step = self.client.receive_eval_point(self._x)
        self._load(self._params, self._x_views)
        return step

    def push(self, num_samples: int) -> bool:
        """Pushes the model's current gradients (taken at the point receive() loaded;
        a parameter without a gradient counts as zero) for num_samples samples.
        Returns True if every shard accepted it, False if it was late (the step
        completed without it, or the job was rewound: carry on). Raises GncError for
        any other refusal."""
        with torch.no_grad():
            for p, view in zip(self._params, self._g_views):
                if p.grad is None:
                    view.zero_()
                else:
                    view.copy_(p.grad)
        try:
            self.client.push_gradient(self._g, num_samples)
        except LateGradient:
            return False
        return True

    def pull(self, model: Optional[torch.nn.Module] = None) -> int:
        """Loads the job's unperturbed parameters w into model (default: the bound
        model), to evaluate it. Pulling into a copy of the model (same parameters)
        leaves the bound model at its evaluation point. Returns the step of the
        snapshot. Raises GncError as Client.pull; ValueError for a model whose
        parameters differ from the layout."""
        target = self.model if model is None else model
        if target is not self.model and layout_of(target) != self.client.layout:
            raise ValueError("the model to load w into differs from the client's layout")
        if self._w is None:
            self._w = np.empty(self.client.num_elements, np.float32)
        step = self.client.pull(self._w)
        self._load(list(target.parameters()), self._views(torch.from_numpy(self._w)))
        return step

    @staticmethod
    def _load(params: list[torch.nn.Parameter], views: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, view in zip(params, views):
                p.copy_(view)
