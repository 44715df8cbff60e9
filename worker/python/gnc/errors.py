"""Exceptions of the Python client. Every status a shard returns, and every failure
to reach one in time, is raised as a GncError carrying the status code, the message
and the shard it came from."""

from __future__ import annotations

from typing import Optional

import grpc

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_code(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a google.rpc.Code number (UNKNOWN if unknown)."""
    return _CODES.get(value, grpc.StatusCode.UNKNOWN)


class GncError(Exception):
    """A refusal or failure of a gnc call.

    Attributes:
      code: the grpc.StatusCode (codes cross the wire unchanged, see proto/gnc.proto:
        INVALID_ARGUMENT bad input, FAILED_PRECONDITION the job's state forbids it,
        ABORTED late for the step, UNAVAILABLE the shard is draining or gone,
        DEADLINE_EXCEEDED no answer in time, ...).
      message: the shard's message (or the client's, for a local failure).
      shard: the index of the shard it came from (for DEADLINE_EXCEEDED, the first
        shard still waited for); None for a check made before any shard was asked, and
        for a verdict on the whole job (FAILED_PRECONDITION: the shards cannot be
        brought to one step; the message names each shard and its step).
      address: that shard's "host:port", or None.
    """

    def __init__(self, code: grpc.StatusCode, message: str, shard: Optional[int] = None,
                 address: Optional[str] = None):
        self.code = code
        self.message = message
        self.shard = shard
        self.address = address
        where = "" if shard is None else f"shard {shard} ({address}): "
        super().__init__(f"{where}{code.name}: {message}")


class LateGradient(GncError):
    """ABORTED: a shard completed the step without this worker's gradient (a straggler
    timeout), or the job was rewound meanwhile. Not a failure: carry on, the next
    receive_eval_point has the step to work on."""
