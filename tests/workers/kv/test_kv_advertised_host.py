"""Which host a KV transport advertises in its handles: decode ranks on other nodes dial it."""

from __future__ import annotations

import socket

import pytest
from moeplane.workers.grpc_security import advertised_host
from moeplane.workers.kv.grpc_backend import GrpcKVTransport

pytestmark = pytest.mark.unit


def test_wildcard_binds_advertise_this_hosts_address() -> None:
    own = socket.gethostbyname(socket.gethostname())
    for wildcard in ("0.0.0.0", "::", ""):
        assert advertised_host(wildcard) == own
    assert advertised_host("0.0.0.0", "10.1.2.3") == "10.1.2.3"  # explicit wins
    assert advertised_host("127.0.0.1") == "127.0.0.1"
    assert advertised_host("10.0.0.7", None) == "10.0.0.7"


def test_transport_never_hands_out_a_wildcard_address() -> None:
    # Not started: only the advertised host is computed, nothing listens on every interface.
    transport = GrpcKVTransport(host="0.0.0.0", tune_malloc=False)
    assert transport._advertise_host == socket.gethostbyname(socket.gethostname())
    assert transport._advertise_host not in ("0.0.0.0", "")
