"""Chart fixtures: the emulated API server of tests/kube (a fresh one per test, seconds to start)."""

from tests.kube.plugin import kube_cluster

__all__ = ["kube_cluster"]
