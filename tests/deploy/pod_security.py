"""The Pod Security Standards' "baseline" and "restricted" levels as checks on one pod (a dict, as
the API server receives it).

Each rule is named as in the standard (https://kubernetes.io/docs/concepts/security/pod-security-standards/)
and follows the admission controller's check of the same name (k8s.io/pod-security-admission,
policy/check_*.go), at its newest version (Kubernetes 1.37). "Containers" means init containers,
containers and ephemeral containers, as there.

Left out, each only ever allowing more: the exemptions for Windows pods (spec.os.name windows) and
for pods in a user namespace (hostUsers: false), and the older versions of each rule. So a pod
passing here passes the admission controller at any version; the reverse may not hold. Not an
admission controller: nothing here talks to an API server.
"""

from __future__ import annotations

from collections.abc import Callable

# Capabilities: what the baseline level allows to be added (Docker's default set).
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}
# Sysctls: the "safe" set (namespaced, isolated from other pods), as of 1.37.
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_slow_start_after_idle", "net.ipv4.tcp_notsent_lowat",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
# Volume Types: the only volume sources the restricted level allows.
RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image", "persistentVolumeClaim",
    "projected", "secret",
}
PROFILE_TYPES = {"RuntimeDefault", "Localhost"}  # seccomp and AppArmor
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"

Rule = Callable[[dict], list[str]]  # a pod -> what in it breaks the rule (empty: it passes)


def containers(pod: dict) -> list[dict]:
    spec = pod["spec"]
    return spec.get("initContainers", []) + spec.get("containers", []) + spec.get("ephemeralContainers", [])


def pod_context(pod: dict) -> dict:
    return pod["spec"].get("securityContext") or {}


def context(c: dict) -> dict:
    return c.get("securityContext") or {}


def each_context(pod: dict) -> list[tuple[str, dict]]:
    """("pod", the pod's securityContext), then (container name, its securityContext) for each."""
    return [("pod", pod_context(pod))] + [(f"container {c['name']}", context(c)) for c in containers(pod)]


def host_process(pod: dict) -> list[str]:
    return [f"{who}: windowsOptions.hostProcess" for who, sc in each_context(pod)
            if (sc.get("windowsOptions") or {}).get("hostProcess") is True]


def host_namespaces(pod: dict) -> list[str]:
    return [f"spec.{field}" for field in ("hostNetwork", "hostPID", "hostIPC") if pod["spec"].get(field) is True]


def privileged_containers(pod: dict) -> list[str]:
    return [f"container {c['name']}: privileged" for c in containers(pod) if context(c).get("privileged") is True]


def added_capabilities(c: dict) -> list[str]:
    return (context(c).get("capabilities") or {}).get("add") or []


def capabilities_baseline(pod: dict) -> list[str]:
    return [f"container {c['name']}: adds {cap}" for c in containers(pod)
            for cap in added_capabilities(c) if cap not in BASELINE_CAPABILITIES]


def host_path_volumes(pod: dict) -> list[str]:
    return [f"volume {v['name']}: hostPath" for v in pod["spec"].get("volumes", []) if v.get("hostPath") is not None]


def host_ports(pod: dict) -> list[str]:
    return [f"container {c['name']}: hostPort {p['hostPort']}" for c in containers(pod)
            for p in c.get("ports", []) if p.get("hostPort", 0) != 0]


def host_probes_and_lifecycle_hooks(pod: dict) -> list[str]:
    found = []
    for c in containers(pod):
        handlers = {name: c.get(name) for name in ("livenessProbe", "readinessProbe", "startupProbe")}
        handlers |= {f"lifecycle.{name}": (c.get("lifecycle") or {}).get(name) for name in ("postStart", "preStop")}
        for where, handler in handlers.items():
            for kind in ("httpGet", "tcpSocket"):
                if ((handler or {}).get(kind) or {}).get("host"):
                    found.append(f"container {c['name']}: {where}.{kind}.host")
    return found


def app_armor(pod: dict) -> list[str]:
    found = [f"annotation {k}: {v}" for k, v in (pod.get("metadata", {}).get("annotations") or {}).items()
             if k.startswith(APPARMOR_ANNOTATION) and v not in ("", "runtime/default") and not v.startswith("localhost/")]
    found += [f"{who}: appArmorProfile.type {sc['appArmorProfile'].get('type')}" for who, sc in each_context(pod)
              if sc.get("appArmorProfile") is not None and sc["appArmorProfile"].get("type") not in PROFILE_TYPES]
    return found


def se_linux(pod: dict) -> list[str]:
    found = []
    for who, sc in each_context(pod):
        options = sc.get("seLinuxOptions") or {}
        if options.get("type", "") not in SELINUX_TYPES:
            found.append(f"{who}: seLinuxOptions.type {options['type']}")
        found += [f"{who}: seLinuxOptions.{field}" for field in ("user", "role") if options.get(field)]
    return found


def proc_mount_type(pod: dict) -> list[str]:
    return [f"container {c['name']}: procMount {context(c)['procMount']}" for c in containers(pod)
            if context(c).get("procMount") not in (None, "Default")]


def seccomp_set(sc: dict) -> str | None:
    """The seccomp profile type a securityContext sets, or None."""
    return (sc.get("seccompProfile") or {}).get("type")


def seccomp_baseline(pod: dict) -> list[str]:
    return [f"{who}: seccompProfile.type {seccomp_set(sc)}" for who, sc in each_context(pod)
            if seccomp_set(sc) is not None and seccomp_set(sc) not in PROFILE_TYPES]


def sysctls(pod: dict) -> list[str]:
    return [f"sysctl {s['name']}" for s in pod_context(pod).get("sysctls") or [] if s["name"] not in SAFE_SYSCTLS]


def volume_types(pod: dict) -> list[str]:
    found = []
    for v in pod["spec"].get("volumes", []):
        sources = set(v) - {"name"}
        if not sources or not sources <= RESTRICTED_VOLUME_TYPES:
            found.append(f"volume {v['name']}: {', '.join(sorted(sources)) or 'no source'}")
    return found


def privilege_escalation(pod: dict) -> list[str]:
    # Must be set to false: Kubernetes' default is true.
    return [f"container {c['name']}: allowPrivilegeEscalation is not false" for c in containers(pod)
            if context(c).get("allowPrivilegeEscalation") is not False]


def running_as_non_root(pod: dict) -> list[str]:
    pod_says = pod_context(pod).get("runAsNonRoot")
    found = ["pod: runAsNonRoot false"] if pod_says is False else []
    for c in containers(pod):
        says = context(c).get("runAsNonRoot")
        if says is False or (says is None and pod_says is not True):
            found.append(f"container {c['name']}: runAsNonRoot is not true (and the pod's is not either)")
    return found


def running_as_non_root_user(pod: dict) -> list[str]:
    return [f"{who}: runAsUser 0" for who, sc in each_context(pod) if sc.get("runAsUser") == 0]


def seccomp_restricted(pod: dict) -> list[str]:
    pod_type = seccomp_set(pod_context(pod))
    found = seccomp_baseline(pod)  # nothing may set another profile type, pod or container
    if pod_type is None:  # then every container must set one itself
        found += [f"container {c['name']}: no seccompProfile.type, and the pod sets none"
                  for c in containers(pod) if seccomp_set(context(c)) is None]
    return found


def capabilities_restricted(pod: dict) -> list[str]:
    found = []
    for c in containers(pod):
        if "ALL" not in ((context(c).get("capabilities") or {}).get("drop") or []):
            found.append(f"container {c['name']}: does not drop ALL")
        found += [f"container {c['name']}: adds {cap}" for cap in added_capabilities(c) if cap != "NET_BIND_SERVICE"]
    return found


BASELINE: dict[str, Rule] = {
    "HostProcess": host_process,
    "Host Namespaces": host_namespaces,
    "Privileged Containers": privileged_containers,
    "Capabilities": capabilities_baseline,
    "HostPath Volumes": host_path_volumes,
    "Host Ports": host_ports,
    "Host Probes / Lifecycle Hooks": host_probes_and_lifecycle_hooks,
    "AppArmor": app_armor,
    "SELinux": se_linux,
    "/proc Mount Type": proc_mount_type,
    "Seccomp": seccomp_baseline,
    "Sysctls": sysctls,
}
# Everything from the baseline level, plus these (the standard names two of them again, with
# stricter values: both the baseline and the restricted version apply).
RESTRICTED: dict[str, Rule] = {f"baseline: {name}": rule for name, rule in BASELINE.items()} | {
    "Volume Types": volume_types,
    "Privilege Escalation": privilege_escalation,
    "Running as Non-root": running_as_non_root,
    "Running as Non-root user": running_as_non_root_user,
    "Seccomp": seccomp_restricted,
    "Capabilities": capabilities_restricted,
}
LEVELS = {"baseline": BASELINE, "restricted": RESTRICTED}


def violations(pod: dict, level: str) -> dict[str, list[str]]:
    """{rule name: what breaks it} for every rule of `level` the pod breaks; empty if it passes."""
    found = {name: rule(pod) for name, rule in LEVELS[level].items()}
    return {name: what for name, what in found.items() if what}
