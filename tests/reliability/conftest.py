"""Reliability fixtures: the emulated API server (tests.kube) for the operator's fault tests."""

from __future__ import annotations

from tests.kube.plugin import kube_cluster, kube_crds, kuberay

__all__ = ["kube_cluster", "kube_crds", "kuberay"]
