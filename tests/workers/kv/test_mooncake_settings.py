"""spec.kvTransfer.mooncake reaches Mooncake's transfer engine: the rank's transport is built with the
protocol and the RDMA devices the spec names (devices defaulting to spec.hardware.rdma.hcas)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from moeplane.api.enums import Role
from moeplane.api.podcontract import mooncake_settings
from moeplane.api.podtemplate import MooncakeProtocol, MooncakeSpec
from moeplane.api.presets import model_preset
from moeplane.api.spec import parse_deployment
from moeplane.workers.kv.grpc_backend import GrpcKVTransport
from moeplane.workers.kv.layout import KVBackend
from moeplane.workers.kv.mooncake_backend import MooncakeKVTransport
from moeplane.workers.serving.actor import RankSpec, make_transport
from moeplane.workers.serving.config import EngineConfig

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def rank(**kw: object) -> RankSpec:
    return RankSpec(model_preset("tiny"), 0, EngineConfig(Role.DECODE, num_blocks=8), **kw)  # type: ignore[arg-type]


def test_protocol_and_devices_reach_the_transport() -> None:
    spec = MooncakeSpec(protocol=MooncakeProtocol.RDMA, device_name="mlx5_0,mlx5_1")
    transport = make_transport(rank(kv_backend=KVBackend.MOONCAKE, mooncake=spec))
    assert isinstance(transport, MooncakeKVTransport)
    assert (transport.protocol, transport.device_name) == ("rdma", "mlx5_0,mlx5_1")
    default = make_transport(rank(kv_backend=KVBackend.MOONCAKE))
    assert isinstance(default, MooncakeKVTransport) and (default.protocol, default.device_name) == ("tcp", "")
    assert isinstance(make_transport(rank()), GrpcKVTransport)


def test_the_spec_resolves_devices_from_the_fabric() -> None:
    doc = yaml.safe_load((EXAMPLES / "deepseek-r1.yaml").read_text())
    doc["spec"]["hardware"]["rdma"]["hcas"] = ["mlx5_0", "mlx5_1"]
    doc["spec"]["kvTransfer"] = {"backend": "mooncake", "mooncake": {"protocol": "rdma"}}
    resolved = mooncake_settings(parse_deployment(doc).spec)
    assert resolved == MooncakeSpec(protocol=MooncakeProtocol.RDMA, device_name="mlx5_0,mlx5_1")
    transport = make_transport(rank(kv_backend=KVBackend.MOONCAKE, mooncake=resolved))
    assert isinstance(transport, MooncakeKVTransport) and transport.device_name == "mlx5_0,mlx5_1"
    doc["spec"]["kvTransfer"] = {"backend": "grpc"}
    assert mooncake_settings(parse_deployment(doc).spec) is None
