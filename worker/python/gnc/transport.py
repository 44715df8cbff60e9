"""How the client reaches a shard: the one place that makes channels and the metadata
every call carries. Transport security (TLS, a bearer token) belongs here and nowhere
else, so that every rpc of the client gets it the same way."""

from __future__ import annotations

from typing import Sequence

import grpc

from gnc import wire
from gnc.v1 import gnc_pb2_grpc


class Transport:
    """Makes channels to shards and the metadata of their calls. Thread-safe.

    Today the channels are plaintext and the metadata is empty; credentials and an
    "authorization" entry will be built here from the client's options.
    """

    def __init__(self) -> None:
        self._options = [
            ("grpc.max_receive_message_length", wire.MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES),
        ]

    def channel(self, address: str) -> grpc.Channel:
        """A new channel to address ("host:port"). The caller closes it."""
        return grpc.insecure_channel(address, options=self._options)

    def stub(self, channel: grpc.Channel) -> gnc_pb2_grpc.ParameterShardStub:
        return gnc_pb2_grpc.ParameterShardStub(channel)

    def metadata(self) -> Sequence[tuple[str, str]]:
        """Metadata for every call to a shard."""
        return ()
