"""Let real Spark build an executor pod from given settings, against a simulated API server.

Usage: python spark_pod_probe.py SETTINGS.json OUT.json [CLAIMS.json]

SETTINGS.json is a {spark conf key: value} object. The script starts a small HTTP
server on 127.0.0.1 that answers the requests Spark's Kubernetes scheduler backend
(fabric8 client) makes: it accepts ConfigMap and Pod creations, serves empty lists,
holds watch websockets open without events, and accepts deletes. It then starts a
pyspark driver in client mode with master k8s://http://127.0.0.1:<port>, waits for the
first executor Pod creation and for the PersistentVolumeClaims that pod's volumes name
(Spark creates an executor's on-demand claims right after its pod; a claim Spark does
not create is waited for 60 s at most), stops Spark, and writes the created pods to
OUT.json and the created claims to CLAIMS.json.

With spark.kubernetes.driver.pod.name in SETTINGS.json, a GET of that pod answers with
a running driver pod (as if this driver ran in it), so Spark makes it the owner of what it
creates for executors where its settings say so (ownPersistentVolumeClaim).

No executor ever runs, and this is not a Kubernetes API server: it only shows what
Spark sends to one.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import sys
import tempfile
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
DRIVER_POD_UID = "00000000-0000-4000-8000-00000000d71e"  # the simulated driver pod's
LIST_KINDS = {
    "pods": "PodList",
    "configmaps": "ConfigMapList",
    "services": "ServiceList",
    "persistentvolumeclaims": "PersistentVolumeClaimList",
}


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Condition()  # notified on every creation
        self.created: list[tuple[str, dict]] = []
        self.pod_created = threading.Event()

    def bodies(self, collection: str) -> list[dict]:
        """What was created in `collection` (e.g. "pods"), in order. Call with the lock held."""
        return [body for path, body in self.created if path.endswith(f"/{collection}")]

    def wait_for_claims_of_first_pod(self, timeout: float) -> bool:
        def all_created() -> bool:
            volumes = self.bodies("pods")[0]["spec"].get("volumes", [])
            wanted = {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v}
            return wanted <= {c["metadata"]["name"] for c in self.bodies("persistentvolumeclaims")}

        with self.lock:
            return self.lock.wait_for(all_created, timeout)


def handler_for(rec: Recorder, driver_pod: str | None):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # keep the test output quiet
            pass

        def reply(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def read_body(self) -> dict:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n)) if n else {}

        def do_GET(self):
            path, _, query = self.path.partition("?")
            if "watch=true" in query and self.headers.get("Sec-WebSocket-Key"):
                # fabric8 watches over a websocket: complete the handshake, send no
                # events, and hold the connection until the client closes it.
                key = self.headers["Sec-WebSocket-Key"] + WEBSOCKET_GUID
                accept = base64.b64encode(hashlib.sha1(key.encode()).digest()).decode()
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept)
                self.end_headers()
                self.wfile.flush()
                try:
                    while self.rfile.read(1):
                        pass
                except OSError:
                    pass
                self.close_connection = True
                return
            if driver_pod and path.endswith(f"/pods/{driver_pod}"):
                namespace = path.split("/namespaces/", 1)[1].split("/", 1)[0]
                self.reply(200, {"kind": "Pod", "apiVersion": "v1",
                                 "metadata": {"name": driver_pod, "namespace": namespace,
                                              "uid": DRIVER_POD_UID, "resourceVersion": "1",
                                              "labels": {"spark-role": "driver"}},
                                 "spec": {"containers": [{"name": "spark-kubernetes-driver"}]},
                                 "status": {"phase": "Running"}})
                return
            kind = LIST_KINDS.get(path.rstrip("/").rsplit("/", 1)[-1])
            if kind:
                self.reply(200, {"kind": kind, "apiVersion": "v1",
                                 "metadata": {"resourceVersion": "1"}, "items": []})
                return
            self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                             "reason": "NotFound", "code": 404, "message": f"{path} not simulated"})

        def do_POST(self):
            body = self.read_body()
            with rec.lock:
                rec.created.append((self.path, copy.deepcopy(body)))
                rec.lock.notify_all()
            meta = body.setdefault("metadata", {})
            meta.update({"uid": str(uuid.uuid4()), "resourceVersion": "2"})
            if body.get("kind") == "Pod":
                body["status"] = {"phase": "Pending"}
                rec.pod_created.set()
            self.reply(201, body)

        def do_DELETE(self):
            self.reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

        def do_PATCH(self):
            self.reply(200, self.read_body())

    return Handler


def main() -> int:
    settings_path, out_path = sys.argv[1:3]
    claims_path = sys.argv[3] if len(sys.argv) > 3 else None
    settings = json.load(open(settings_path))
    rec = Recorder()
    driver_pod = settings.get("spark.kubernetes.driver.pod.name")
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(rec, driver_pod))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    from pyspark.sql import SparkSession  # after the server is up; slow import

    with tempfile.TemporaryDirectory(prefix="spark-probe-driver-") as driver_dir:
        builder = SparkSession.builder.master(f"k8s://http://127.0.0.1:{port}")
        for key, value in settings.items():
            builder = builder.config(key, value)
        # Client mode on this machine: the driver's own scratch space and address.
        builder = (
            builder.config("spark.local.dir", driver_dir)
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
            .config("spark.scheduler.minRegisteredResourcesRatio", "0")
        )
        spark = builder.getOrCreate()
        try:
            if not rec.pod_created.wait(timeout=180):
                print("spark_pod_probe: no executor pod was created", file=sys.stderr)
                return 1
            rec.wait_for_claims_of_first_pod(timeout=60)
        finally:
            spark.stop()
            server.shutdown()
    with rec.lock:
        pods, claims = rec.bodies("pods"), rec.bodies("persistentvolumeclaims")
    json.dump(pods, open(out_path, "w"), indent=1)
    if claims_path:
        json.dump(claims, open(claims_path, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
