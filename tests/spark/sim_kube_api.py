"""A SIMULATED Kubernetes API server for the pod list and watch the agent makes.

No real kube-apiserver can run on these machines (spec/kubernetes.md §4). This serves what
kube-rs's watcher and the agent's lookups call: `GET /api/v1/pods` (also per namespace) as a
PodList filtered by `labelSelector` (`k=v`, `k`, comma-separated) and `fieldSelector`
(`spec.nodeName=`, `metadata.namespace=`), and the same with `watch=true&resourceVersion=N`: the
events after N as JSON lines, then live ones, until `timeoutSeconds`. It also serves
`POST /api/v1/namespaces/{ns}/pods` (a pod created, as the driver creates executor pods; used by
tests/spark/pod_launcher.py), `GET /api/v1/namespaces/{ns}/pods/{name}`, and `GET
/api/v1/namespaces/{ns}/secrets/{name}` (what the agent reads with `agent.auth.pods.secretFiles
read`): the Secret with its `data` values Base64-encoded as the real API server sends them, or a
404 Status for an unknown one. For executor local dirs on PersistentVolumes
(`agent.localDirs.translate`) it serves PersistentVolumeClaims and PersistentVolumes: `GET
/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}` and `GET /api/v1/persistentvolumes/{name}`
(404 Status when unknown), created with `put_claim` / `put_volume` or `POST` to the collection (as a
provisioner binds them; pod_launcher.py does). The Rust integration tests
have a fuller one (tests/integration/k8s_support/sim_api.rs: cut watches, 410s, failures); this
one is for the Python tests that drive the agent binary with the real Spark client.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def _selector(text: str | None) -> list[tuple[str, str | None]]:
    out = []
    for part in filter(None, (text or "").split(",")):
        key, eq, value = part.partition("=")
        out.append((key.rstrip("="), value.lstrip("=") if eq else None))
    return out


def _field(pod: dict, path: str):
    value = pod
    for part in path.split("."):
        value = (value or {}).get(part)
    return value


def _not_found(resource: str, name: str) -> dict:
    """The Status a real API server answers a GET of an unknown object with."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f'{resource} "{name}" not found', "reason": "NotFound",
            "details": {"name": name, "kind": resource}, "code": 404}


class SimApi:
    """Pods in memory; every change is an event with its own resourceVersion."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.cond = threading.Condition()
        self.rv = 1
        self.pods: dict[tuple[str, str], dict] = {}
        self.history: list[tuple[int, str, dict]] = []
        self.requests: list[str] = []
        self.secrets: dict[tuple[str, str], dict[str, bytes]] = {}
        # PersistentVolumeClaims by (namespace, name), PersistentVolumes by ("", name); no events.
        self.claims: dict[tuple[str, str], dict] = {}
        self.volumes: dict[tuple[str, str], dict] = {}
        self.server = ThreadingHTTPServer((host, 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, path) -> str:
        path.write_text(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n"
            f"    server: {self.url}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n"
            "    user: u\ncurrent-context: sim\nusers:\n- name: u\n  user: {}\n"
        )
        return str(path)

    def _record(self, kind: str, pod: dict) -> None:
        with self.cond:
            self.rv += 1
            pod = copy.deepcopy(pod)
            pod.setdefault("apiVersion", "v1")
            pod.setdefault("kind", "Pod")
            pod["metadata"]["resourceVersion"] = str(self.rv)
            key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
            if kind == "DELETED":
                self.pods.pop(key, None)
            else:
                self.pods[key] = pod
            self.history.append((self.rv, kind, pod))
            self.cond.notify_all()

    def apply(self, pod: dict) -> None:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        self._record("MODIFIED" if key in self.pods else "ADDED", pod)

    def delete(self, namespace: str, name: str) -> None:
        pod = self.pods.get((namespace, name))
        if pod is not None:
            self._record("DELETED", pod)

    def put_secret(self, namespace: str, name: str, data: dict[str, bytes]) -> None:
        """A Secret of `data` (raw bytes per key), as `kubectl create secret generic` makes it."""
        with self.cond:
            self.secrets[(namespace, name)] = dict(data)

    def secret_gets(self, namespace: str, name: str) -> int:
        """How many times that Secret was asked for."""
        return self.requests.count(f"/api/v1/namespaces/{namespace}/secrets/{name}")

    def _secret(self, parts: list[str]) -> tuple[int, dict]:
        # /api/v1/namespaces/{ns}/secrets/{name}
        namespace, name = parts[3], parts[5]
        with self.cond:
            data = self.secrets.get((namespace, name))
        if data is None:
            return 404, _not_found("secrets", name)
        return 200, {"kind": "Secret", "apiVersion": "v1", "type": "Opaque",
                     "metadata": {"name": name, "namespace": namespace, "uid": f"uid-secret-{name}"},
                     "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}

    def put_claim(self, claim: dict) -> dict:
        """A PersistentVolumeClaim (metadata.namespace set), stored as the API returns it."""
        return self._put_object(self.claims, "PersistentVolumeClaim", claim)

    def put_volume(self, volume: dict) -> dict:
        """A PersistentVolume (cluster-scoped), stored as the API returns it."""
        return self._put_object(self.volumes, "PersistentVolume", volume)

    def drop_claim(self, namespace: str, name: str) -> None:
        with self.cond:
            self.claims.pop((namespace, name), None)

    def drop_volume(self, name: str) -> None:
        with self.cond:
            self.volumes.pop(("", name), None)

    def _put_object(self, store: dict, kind: str, obj: dict) -> dict:
        with self.cond:
            self.rv += 1
            obj = copy.deepcopy(obj)
            obj.update(apiVersion="v1", kind=kind)
            meta = obj["metadata"]
            meta["resourceVersion"] = str(self.rv)
            meta.setdefault("uid", f"uid-{kind.lower()}-{meta['name']}")
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
            store[(meta.get("namespace", ""), meta["name"])] = obj
            return copy.deepcopy(obj)

    def _get_object(self, store: dict, resource: str, namespace: str, name: str) -> tuple[int, dict]:
        with self.cond:
            obj = store.get((namespace, name))
        if obj is None:
            return 404, _not_found(resource, name)
        return 200, obj

    def _matches(self, pod: dict, path: str, labels, fields) -> bool:
        parts = path.strip("/").split("/")
        if len(parts) >= 4 and parts[2] == "namespaces" and pod["metadata"]["namespace"] != parts[3]:
            return False
        have = pod["metadata"].get("labels") or {}
        for key, value in labels:
            if key not in have or (value is not None and have[key] != value):
                return False
        return all(_field(pod, key) == value for key, value in fields)

    def _handler(self):
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):
                pass

            def do_GET(self):
                url = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                sim.requests.append(self.path)
                parts = url.path.strip("/").split("/")
                if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "secrets":
                    return self._reply(*sim._secret(parts))
                if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
                    return self._reply(*sim._get_object(sim.pods, "pods", parts[3], parts[5]))
                if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and \
                        parts[4] == "persistentvolumeclaims":
                    return self._reply(*sim._get_object(sim.claims, parts[4], parts[3], parts[5]))
                if len(parts) == 4 and parts[:3] == ["api", "v1", "persistentvolumes"]:
                    return self._reply(*sim._get_object(sim.volumes, parts[2], "", parts[3]))
                if not url.path.endswith("/pods"):
                    return self._reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                             "reason": "NotFound", "code": 404})
                labels, fields = _selector(q.get("labelSelector")), _selector(q.get("fieldSelector"))
                match = lambda pod: sim._matches(pod, url.path, labels, fields)  # noqa: E731
                if q.get("watch") != "true":
                    with sim.cond:
                        items = [p for p in sim.pods.values() if match(p)]
                        rv = sim.rv
                    return self._reply(200, {"kind": "PodList", "apiVersion": "v1",
                                             "metadata": {"resourceVersion": str(rv)}, "items": items})
                self._watch(int(q.get("resourceVersion") or 0), float(q.get("timeoutSeconds") or 60), match)

            def do_POST(self):
                parts = urlsplit(self.path).path.strip("/").split("/")
                if parts[-1] in ("persistentvolumeclaims", "persistentvolumes"):
                    return self._post_storage(parts)
                if len(parts) != 5 or parts[:3] != ["api", "v1", "namespaces"] or parts[4] != "pods":
                    return self._reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                             "reason": "NotFound", "code": 404})
                pod = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                pod["metadata"]["namespace"] = parts[3]
                sim.apply(pod)
                self._reply(201, pod)

            def _post_storage(self, parts: list[str]) -> None:
                obj = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                if parts == ["api", "v1", "persistentvolumes"]:
                    return self._reply(201, sim.put_volume(obj))
                if len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"]:
                    obj["metadata"]["namespace"] = parts[3]
                    return self._reply(201, sim.put_claim(obj))
                self._reply(404, _not_found(parts[-1], ""))

            def _reply(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _watch(self, since: int, timeout: float, match) -> None:
                # HTTP/1.0 without a length: the body is the events until the connection closes.
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                deadline = time.monotonic() + min(timeout, 60)
                sent = since
                try:
                    while time.monotonic() < deadline:
                        with sim.cond:
                            sim.cond.wait_for(lambda: sim.rv > sent, timeout=max(0.0, deadline - time.monotonic()))
                            events = [e for e in sim.history if e[0] > sent]
                        for rv, kind, pod in events:
                            sent = rv
                            if match(pod):
                                line = json.dumps({"type": kind, "object": pod}) + "\n"
                                self.wfile.write(line.encode())
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler
