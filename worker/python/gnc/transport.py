"""How the client reaches a shard: the one place that makes channels and the metadata
every call carries. Transport security (TLS, a bearer token) belongs here and nowhere
else, so that every rpc of the client gets it the same way."""

from __future__ import annotations

from typing import Sequence

import grpc

from gnc import wire
from gnc.v1 import gnc_pb2, gnc_pb2_grpc

_SERVICE = gnc_pb2.DESCRIPTOR.services_by_name["ParameterShard"]
_TRAIN = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['Train'].name}"


class Transport:
    """Makes channels to shards and the metadata of their calls. Thread-safe.

    Today the channels are plaintext and the metadata is empty; credentials and an
    "authorization" entry will be built here from the client's options.
    """

    def __init__(self) -> None:
        self._options = [
            ("grpc.max_receive_message_length", wire.MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES),
            # Reconnect quickly to a shard that restarts (gRPC's default backoff grows
            # to 2 min), as the C++ client does.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]

    def channel(self, address: str) -> grpc.Channel:
        """A new channel to address ("host:port"). The caller closes it."""
        return grpc.insecure_channel(address, options=self._options)

    def stub(self, channel: grpc.Channel) -> gnc_pb2_grpc.ParameterShardStub:
        return gnc_pb2_grpc.ParameterShardStub(channel)

    def train(self, channel: grpc.Channel) -> grpc.StreamStreamMultiCallable:
        """The Train rpc of the stub, but taking requests already serialized
        (wire.gradient_request), so that a chunk's payload is copied only once."""
        return channel.stream_stream(
            _TRAIN, request_serializer=None,
            response_deserializer=gnc_pb2.TrainResponse.FromString)

    def metadata(self) -> Sequence[tuple[str, str]]:
        """Metadata for every call to a shard."""
        return ()
