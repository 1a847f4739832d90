"""The Pod Security Standards' "restricted" profile, as the Kubernetes documentation defines its
controls (https://kubernetes.io/docs/concepts/security/pod-security-standards/, "latest"): the
baseline controls plus the restricted ones. `violations(pod_spec)` lists every control a pod spec
breaks, one line each, as Pod Security admission would name it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Baseline: capabilities a container may add (beyond them: "Capabilities" control).
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
        "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
    }
)  # fmt: skip
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)  # fmt: skip
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
# Restricted: the only volume types allowed.
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(field) or ():
            yield f"{field}[{c.get('name')}]", c


def baseline_violations(spec: dict[str, Any]) -> list[str]:
    out = []
    pod_ctx = spec.get("securityContext") or {}
    # HostProcess
    if (pod_ctx.get("windowsOptions") or {}).get("hostProcess"):
        out.append("HostProcess: securityContext.windowsOptions.hostProcess")
    # Host Namespaces
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(f"Host Namespaces: {field}")
    # HostPath Volumes
    for v in spec.get("volumes") or ():
        if "hostPath" in v:
            out.append(f"HostPath Volumes: volumes[{v.get('name')}]")
    # Sysctls
    for s in pod_ctx.get("sysctls") or ():
        if s.get("name") not in SAFE_SYSCTLS:
            out.append(f"Sysctls: {s.get('name')}")
    for where, c in _containers(spec):
        ctx = c.get("securityContext") or {}
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"HostProcess: {where}")
        # Privileged Containers
        if ctx.get("privileged"):
            out.append(f"Privileged Containers: {where}")
        # Capabilities (baseline)
        added = set((ctx.get("capabilities") or {}).get("add") or ())
        if added - BASELINE_CAPABILITIES:
            out.append(f"Capabilities: {where} adds {sorted(added - BASELINE_CAPABILITIES)}")
        # Host Ports
        for p in c.get("ports") or ():
            if p.get("hostPort"):
                out.append(f"Host Ports: {where} hostPort {p['hostPort']}")
        # /proc Mount Type
        if ctx.get("procMount", "Default") != "Default":
            out.append(f"/proc Mount Type: {where}")
    # AppArmor, SELinux, Seccomp (not Unconfined), at pod and container level
    for where, ctx in [("pod", pod_ctx)] + [
        (w, c.get("securityContext") or {}) for w, c in _containers(spec)
    ]:
        if (ctx.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
            out.append(f"AppArmor: {where}")
        selinux = ctx.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            out.append(f"SELinux: {where}")
        if (ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append(f"Seccomp: {where} is Unconfined")
    return out


def violations(spec: dict[str, Any]) -> list[str]:
    """Every "restricted" control (baseline included) that the pod spec breaks."""
    out = baseline_violations(spec)
    pod_ctx = spec.get("securityContext") or {}
    # Volume Types
    for v in spec.get("volumes") or ():
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"Volume Types: volumes[{v.get('name')}] is {sorted(kinds)}")
    pod_non_root = pod_ctx.get("runAsNonRoot") is True
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost")
    if pod_ctx.get("runAsUser") == 0:
        out.append("Running as Non-root user: pod runAsUser 0")
    for where, c in _containers(spec):
        ctx = c.get("securityContext") or {}
        # Privilege Escalation
        if ctx.get("allowPrivilegeEscalation") is not False:
            out.append(f"Privilege Escalation: {where} does not set allowPrivilegeEscalation false")
        # Running as Non-root
        non_root = ctx.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            out.append(f"Running as Non-root: {where}")
        # Running as Non-root user
        if ctx.get("runAsUser") == 0:
            out.append(f"Running as Non-root user: {where} runAsUser 0")
        # Seccomp
        kind = (ctx.get("seccompProfile") or {}).get("type")
        if not (kind in ("RuntimeDefault", "Localhost") or (kind is None and pod_seccomp)):
            out.append(f"Seccomp: {where} has no RuntimeDefault or Localhost profile")
        # Capabilities (restricted)
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or ()):
            out.append(f"Capabilities: {where} does not drop ALL")
        if set(caps.get("add") or ()) - {"NET_BIND_SERVICE"}:
            out.append(f"Capabilities: {where} adds {sorted(set(caps['add']) - {'NET_BIND_SERVICE'})}")
    return list(dict.fromkeys(out))
