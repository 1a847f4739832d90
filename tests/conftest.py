"""Shared test configuration: tiers are marked per test; GPU tests skip cleanly without CUDA."""

from __future__ import annotations

import pytest

from tests.checkpoint_fixtures import hf_checkpoint  # noqa: F401  (a shared session fixture)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # torch missing or broken: no GPU tests either way
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is visible")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server on 127.0.0.1, shared by the session. Tests use distinct key prefixes."""
    from moeplane.workers.embedded.local_redis import LocalRedis

    server = LocalRedis().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance per test session (127.0.0.1 only, as `moeplane up` runs it): actors cost
    ~300 MB and seconds each on 2 cores."""
    import ray
    from moeplane.workers.embedded.ray_local import init_local_ray

    if not ray.is_initialized():
        init_local_ray(num_cpus=4)
    yield ray
    ray.shutdown()
