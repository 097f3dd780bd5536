"""A simulated two-node pod network made of real network namespaces, for real Spark in pod network mode.

The Python twin of tests/integration/podnet_support (a bridge CNI, spec/pod-network.md §3), with a
second node and an underlay that joins the nodes and the test process:

    netns <p>-wire:   bridge `wire`                          <- the nodes' underlay (a switch)
    this process:     veth <p>c, 10.231.0.254/24             <- "control plane": the simulated API
                      + routes to both pod CIDRs                 server, Spark master and driver
    netns <p>-node-a: wire0 10.231.0.1/24, cni0 10.231.1.1/24 <- node IP; its agent and its Worker
    netns <p>-node-b: wire0 10.231.0.2/24, cni0 10.231.2.1/24
    netns <p>-<pod>:  eth0 10.231.N.x/24 via cni0's IP,      <- one executor pod; `sleep` as pause
                      a `sleep` as its pause process

Nodes forward (pod <-> underlay) and route to each other's pod CIDR through the underlay. The test
process gets one veth into the underlay and two routes (removed with the veth); nothing else of the
machine's network is touched. Everything is removed by `close()`, also when the test fails.

Privileges: root, `ip` and `nft`. Without them `privileged()` skips the test, except under CI (set to
anything but `false`/`0`), where it fails: CI must not skip silently (as podnet_support does).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from servers import wait_until

NET = 231
CONTROL_IP = f"10.{NET}.0.254"
PORT = 7337


def privileged(test: str) -> None:
    """Returns if this test can run here; skips it, or fails it under CI, if it cannot."""
    missing = None
    if os.geteuid() != 0:
        missing = "root"
    else:
        missing = next((f"the `{t}` program" for t in ("ip", "nft")
                        if shutil.which(t) is None or subprocess.run([t, "-V"], capture_output=True).returncode),
                       None)
    if missing is None:
        return
    ci = os.environ.get("CI", "") not in ("", "false", "0")
    if ci:
        pytest.fail(f"{test}: needs {missing}; under CI a namespaced test must fail, not skip", pytrace=False)
    pytest.skip(f"{test}: needs {missing} (set CI=true to make this a failure)")


def ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    assert out.returncode == 0, f"ip {' '.join(args)}: {out.stderr.strip()}"


@dataclass
class Pod:
    name: str  # also its netns's short name
    node: str
    ip: str
    netns: str
    pause: subprocess.Popen


class Topology:
    """Two nodes, `node-a` and `node-b`, on an underlay; pods made with `pod()`. See the module doc."""

    NODES = ("node-a", "node-b")

    def __init__(self) -> None:
        self.prefix = f"ps{os.getpid()}"
        self.namespaces: list[str] = []
        self.pods: dict[str, Pod] = {}
        self._next_host = {n: 10 for n in self.NODES}
        self._veth = f"{self.prefix}c"
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def netns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def node_ip(self, node: str) -> str:
        return f"10.{NET}.0.{self.NODES.index(node) + 1}"

    def pod_cidr(self, node: str) -> str:
        return f"10.{NET}.{self.NODES.index(node) + 1}.0/24"

    def gateway(self, node: str) -> str:
        return f"10.{NET}.{self.NODES.index(node) + 1}.1"

    def exec_argv(self, name: str) -> list[str]:
        """The argv prefix that runs a program inside namespace `name` (a node or a pod)."""
        return ["ip", "netns", "exec", self.netns(name)]

    def _add_netns(self, name: str) -> str:
        full = self.netns(name)
        ip("netns", "add", full)
        self.namespaces.append(full)
        ip("-n", full, "link", "set", "lo", "up")
        return full

    def _build(self) -> None:
        wire = self._add_netns("wire")
        ip("-n", wire, "link", "add", "wire", "type", "bridge")
        ip("-n", wire, "link", "set", "wire", "up")
        # This process's leg into the underlay.
        ip("link", "add", self._veth, "type", "veth", "peer", "name", "ctl", "netns", wire)
        ip("-n", wire, "link", "set", "ctl", "master", "wire", "up")
        ip("addr", "add", f"{CONTROL_IP}/24", "dev", self._veth)
        ip("link", "set", self._veth, "up")
        for node in self.NODES:
            ns = self._add_netns(node)
            ip("-n", wire, "link", "add", f"u-{node}", "type", "veth", "peer", "name", "wire0", "netns", ns)
            ip("-n", wire, "link", "set", f"u-{node}", "master", "wire", "up")
            ip("-n", ns, "addr", "add", f"{self.node_ip(node)}/24", "dev", "wire0")
            ip("-n", ns, "link", "set", "wire0", "up")
            ip("-n", ns, "link", "add", "cni0", "type", "bridge")
            # A fixed MAC, as CNI bridges have: otherwise the bridge takes its lowest port's MAC,
            # and a pod's veth going away can change it under the other pods' gateway entries.
            ip("-n", ns, "link", "set", "cni0", "address", f"02:00:0a:e7:{self.NODES.index(node) + 1:02x}:01")
            ip("-n", ns, "addr", "add", f"{self.gateway(node)}/24", "dev", "cni0")
            ip("-n", ns, "link", "set", "cni0", "up")
            subprocess.run([*self.exec_argv(node), "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
            ip("route", "add", self.pod_cidr(node), "via", self.node_ip(node), "dev", self._veth)
        for node in self.NODES:
            for other in self.NODES:
                if other != node:
                    ip("-n", self.netns(node), "route", "add", self.pod_cidr(other), "via", self.node_ip(other))

    def pod(self, name: str, node: str) -> Pod:
        """A pod sandbox on `node` with the node's next free IP, its pause process, and the probe table."""
        ns = self._add_netns(name)
        host = self._next_host[node]
        self._next_host[node] += 1
        pod_ip = f"10.{NET}.{self.NODES.index(node) + 1}.{host}"
        node_ns = self.netns(node)
        ip("-n", node_ns, "link", "add", f"v-{name}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", node_ns, "link", "set", f"v-{name}", "master", "cni0", "up")
        ip("-n", ns, "addr", "add", f"{pod_ip}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "route", "add", "default", "via", self.gateway(node))
        nft(ns, PROBE_TABLE)
        pause = subprocess.Popen([*self.exec_argv(name), "sleep", "3600"], stdin=subprocess.DEVNULL)
        pod = Pod(name, node, pod_ip, ns, pause)
        self.pods[name] = pod
        return pod

    def kill_pod(self, name: str) -> None:
        """Pod death as the runtime and CNI DEL do it: every process in the pod is killed, its veth and
        namespace are deleted."""
        pod = self.pods.pop(name)
        kill_netns_processes(pod.netns)
        pod.pause.wait(timeout=10)
        # The runtime deletes the network only once the containers are gone (their FINs go out first).
        wait_until(lambda: not netns_pids(pod.netns), 20, 0.05, f"every process of pod {name} to exit")
        ip("-n", self.netns(pod.node), "link", "del", f"v-{name}")
        ip("netns", "del", pod.netns)
        self.namespaces.remove(pod.netns)

    def close(self) -> None:
        for pod in self.pods.values():
            kill_netns_processes(pod.netns)
        for pod in self.pods.values():
            try:
                pod.pause.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # Pods before nodes before the underlay; the veth goes with its routes.
        for ns in reversed(self.namespaces):
            kill_netns_processes(ns)
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        self.namespaces.clear()
        subprocess.run(["ip", "link", "del", self._veth], stderr=subprocess.DEVNULL)


def netns_pids(netns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def kill_netns_processes(netns: str) -> None:
    """SIGKILL to every process inside `netns` (only ones this test started live there)."""
    sigkill(netns_pids(netns))


def sigkill(pids: list[int]) -> None:
    """SIGKILL to each of `pids` (one that has exited already is skipped)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def nft(netns: str, script: str) -> None:
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=script, capture_output=True,
                         text=True)
    assert out.returncode == 0, f"nft in {netns}: {out.stderr.strip()}"


# Counters only (policy accept, its own table, after the agent's nat output chain at -110): which path
# each connection a pod opens to :PORT took. The DNAT bit set = the agent's source-side redirect of a
# dead executor IP to its owner node (spec §2.4); clear = the connection went to a live pod IP, that
# is an in-pod listener. Replies are counted as bytes the pod received from the service by path.
# The bit is tested with a mask: `ct status != dnat` compares the whole status word, so it also
# holds for a NATed flow (whose status has other bits too).
PROBE_TABLE = f"""
table inet podnet_probe {{
  chain out {{ type filter hook output priority 10; policy accept;
    tcp dport {PORT} tcp flags syn ct status & dnat == dnat counter comment "redirect_conns"
    tcp dport {PORT} tcp flags syn ct status & dnat == 0 counter comment "direct_conns"
  }}
  chain in {{ type filter hook input priority 10; policy accept;
    tcp sport {PORT} ct status & dnat == dnat counter comment "redirect_bytes"
    tcp sport {PORT} ct status & dnat == 0 counter comment "direct_bytes"
  }}
}}
"""


def probe_counters(netns: str) -> dict[str, int]:
    """{'redirect_conns': packets, 'direct_conns': packets, 'redirect_bytes': bytes, 'direct_bytes': bytes}."""
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "table", "inet", "podnet_probe"],
                         capture_output=True, text=True, check=True)
    counts: dict[str, int] = {}
    for item in json.loads(out.stdout)["nftables"]:
        rule = item.get("rule")
        if not rule:
            continue
        counter = next(e["counter"] for e in rule["expr"] if "counter" in e)
        what = rule["comment"]
        counts[what] = counter["bytes"] if what.endswith("bytes") else counter["packets"]
    return counts
