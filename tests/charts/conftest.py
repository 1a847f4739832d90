"""Chart fixtures: the emulated API server of tests/kube (a fresh one per test, seconds to start),
and the KubeRay driver for the uninstall test, which runs the operator."""

from tests.kube.plugin import kube_cluster, kuberay

__all__ = ["kube_cluster", "kuberay"]
