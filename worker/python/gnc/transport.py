"""How the client reaches a shard: the one place that makes channels and the metadata
every call carries. Transport security (TLS, a bearer token) belongs here and nowhere
else, so that every rpc of the client gets it the same way (as common/credentials.h
does for the C++ client)."""

from __future__ import annotations

import ipaddress
import logging
from typing import Optional, Sequence

import grpc

from gnc import wire
from gnc.v1 import gnc_pb2, gnc_pb2_grpc

_SERVICE = gnc_pb2.DESCRIPTOR.services_by_name["ParameterShard"]
_TRAIN = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['Train'].name}"
_log = logging.getLogger("gnc")

# Tokens shorter than this are refused, as by the daemons (kMinTokenLength).
MIN_TOKEN_LENGTH = 16


def _read(path: str, what: str) -> bytes:
    """A secret file's bytes; errors name the file, never its contents."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read the {what} file {path}: {e.strerror}") from None
    if not data.strip():
        raise ValueError(f"the {what} file {path} is empty")
    return data


def read_token(path: str) -> str:
    """The job token in `path`, surrounding whitespace removed; ValueError when it is
    shorter than MIN_TOKEN_LENGTH or not printable ASCII without spaces."""
    token = _read(path, "auth token").strip()
    if any(c < 0x21 or c > 0x7E for c in token):
        raise ValueError(f"the auth token in {path} must be printable ASCII without spaces")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the auth token in {path} has {len(token)} characters; at least "
                         f"{MIN_TOKEN_LENGTH} are required")
    return token.decode("ascii")


def is_loopback(address: str) -> bool:
    """Whether "host:port" names this machine only (localhost, 127.0.0.0/8, ::1)."""
    host = address
    if host.startswith("["):
        host = host[1:host.find("]")]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Transport:
    """Makes channels to shards and the metadata of their calls. Thread-safe.

    TLS is on when tls_ca_file or tls_cert_file is given: tls_ca_file holds the PEM CA
    certificates that sign the shards' (None: the system's roots), tls_cert_file and
    tls_key_file this client's certificate and key for mutual TLS. auth_token_file
    holds the job token, sent as "authorization: Bearer <token>" with every call.
    The files are read here, once; ValueError when one cannot be read or they do not
    go together.
    """

    def __init__(self, tls_ca_file: Optional[str] = None, tls_cert_file: Optional[str] = None,
                 tls_key_file: Optional[str] = None,
                 auth_token_file: Optional[str] = None) -> None:
        self._options = [
            ("grpc.max_receive_message_length", wire.MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES),
            # Reconnect quickly to a shard that restarts (gRPC's default backoff grows
            # to 2 min), as the C++ client does.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if bool(tls_cert_file) != bool(tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together (mutual TLS needs both)")
        self._credentials: Optional[grpc.ChannelCredentials] = None
        if tls_ca_file or tls_cert_file:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca_file, "TLS CA") if tls_ca_file else None,
                private_key=_read(tls_key_file, "TLS key") if tls_key_file else None,
                certificate_chain=_read(tls_cert_file, "TLS certificate") if tls_cert_file
                else None)
        self._metadata: tuple[tuple[str, str], ...] = ()
        if auth_token_file:
            self._metadata = (("authorization", f"Bearer {read_token(auth_token_file)}"),)

    @property
    def tls(self) -> bool:
        return self._credentials is not None

    def channel(self, address: str) -> grpc.Channel:
        """A new channel to address ("host:port"). The caller closes it."""
        if self._credentials is not None:
            return grpc.secure_channel(address, self._credentials, options=self._options)
        if self._metadata and not is_loopback(address):
            _log.warning("the job token travels in plaintext to %s: anyone on the network "
                         "path can read it; use TLS (tls_ca_file)", address)
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
        """Metadata for every call to a shard: the token, if any."""
        return self._metadata
