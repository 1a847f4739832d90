"""A pod runner for tests: KubeRay, the Deployment and Job controllers, the scheduler and the kubelet for
the emulated API server of tests/kube, running every pod's containers as local processes.

`runner.PodRunner` is the entry point; `sandbox` explains how pods get their own addresses, DNS,
/tmp and process namespaces on one machine; `kuberay_*` port KubeRay v1.6.2 (pods, reconcile, status)
with citations; `kubelet` runs one pod.
"""
