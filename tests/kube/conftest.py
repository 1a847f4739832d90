"""Fixtures of the emulated API server (defined in tests.kube.plugin for reuse by other suites)."""

from tests.kube.plugin import kube_cluster, kube_crds, kuberay

__all__ = ["kube_cluster", "kube_crds", "kuberay"]
