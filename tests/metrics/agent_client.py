"""Just enough of Spark's shuffle wire protocol (spec §1-§2) and on-disk layout (§4) to put real
traffic through an agent from Python: write shuffle files where an executor would, register the
executor, open a stream, fetch its chunks, send a bad frame. Plus starting the agent binary and
small HTTP helpers for its metrics port. Every wait is a bounded poll.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 30.0


def wait_until(cond, what: str, timeout: float = WAIT_S, interval: float = 0.05):
    """Poll cond() until truthy and return its value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agent_binary() -> Path:
    env = os.environ.get("AGENT_BIN")
    if env:
        return Path(env)
    for profile in ("release", "debug"):
        p = REPO / "target" / profile / "spark-shuffle-agent"
        if p.is_file():
            return p
    raise FileNotFoundError("no agent binary: run `cargo build --release` or set AGENT_BIN")


# --- HTTP on the metrics port -----------------------------------------------------------------------------------


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def try_get(port: int, path: str) -> tuple[int, str] | None:
    """None while nothing listens yet."""
    try:
        return http_get(port, path)
    except (urllib.error.URLError, ConnectionError, OSError):
        return None


# --- The agent process --------------------------------------------------------------------------------------------


@dataclass
class Agent:
    proc: subprocess.Popen
    metrics_port: int
    log_path: Path
    shuffle_port: int = -1
    _lines: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def log(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=WAIT_S)
        return self.proc.returncode


def start_agent(work: Path, root: Path, *, extra_args=(), env_extra=None, wait_listening=True) -> Agent:
    """Starts the binary on 127.0.0.1 with a free metrics port and shuffle port 0."""
    state = work / "state"
    state.mkdir(parents=True, exist_ok=True)
    metrics_port = free_port()
    argv = [str(agent_binary()), "--bind", "127.0.0.1", "--port", "0", "--metrics-port", str(metrics_port),
            "--root", str(root), "--state-dir", str(state), *extra_args]
    env = {**os.environ, "RUST_LOG": os.environ.get("AGENT_RUST_LOG", "info"), "NO_COLOR": "1", **(env_extra or {})}
    log_path = work / "agent.log"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=env, text=True)
    agent = Agent(proc, metrics_port, log_path)

    def pump():
        with open(log_path, "w") as f:
            for line in proc.stderr:
                f.write(line)
                f.flush()
                with agent._lock:
                    agent._lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    if wait_listening:
        agent.shuffle_port = wait_for_shuffle_port(agent)
    return agent


SHUFFLE_LINE = re.compile(r'(?<!metrics )listening.*addr"?[=:]"?127\.0\.0\.1:(\d+)')


def wait_for_shuffle_port(agent: Agent) -> int:
    def found():
        if agent.proc.poll() is not None:
            raise RuntimeError(f"agent exited with {agent.proc.returncode}:\n{agent.log()}")
        m = SHUFFLE_LINE.search(agent.log())
        return int(m.group(1)) if m else None

    return wait_until(found, "the agent's shuffle 'listening' line")


# --- Spark's frames -----------------------------------------------------------------------------------------------


def enc_str(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">i", len(b)) + b


def enc_strs(items: list[str]) -> bytes:
    return struct.pack(">i", len(items)) + b"".join(enc_str(s) for s in items)


def register_executor(app: str, exec_id: str, local_dirs: list[str], sub_dirs: int) -> bytes:
    return (bytes([2]) + enc_str(app) + enc_str(exec_id) + enc_strs(local_dirs) + struct.pack(">i", sub_dirs)
            + enc_str("org.apache.spark.shuffle.sort.SortShuffleManager"))


def fetch_shuffle_blocks(app: str, exec_id: str, shuffle_id: int, map_ids: list[int], reduce_ids: list[list[int]],
                         batch: bool = False) -> bytes:
    out = bytes([9]) + enc_str(app) + enc_str(exec_id) + struct.pack(">i", shuffle_id)
    out += struct.pack(">i", len(map_ids)) + b"".join(struct.pack(">q", m) for m in map_ids)
    out += struct.pack(">i", len(reduce_ids))
    for rs in reduce_ids:
        out += struct.pack(">i", len(rs)) + b"".join(struct.pack(">i", r) for r in rs)
    return out + bytes([1 if batch else 0])


class ShuffleConnection:
    """One client connection speaking RpcRequest and ChunkFetchRequest."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        self.next_id = 1000

    def close(self):
        self.sock.close()

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            piece = self.sock.recv(n - len(buf))
            if not piece:
                raise ConnectionError("closed by the agent")
            buf += piece
        return buf

    def recv_frame(self) -> tuple[int, bytes]:
        (length,) = struct.unpack(">q", self._recv_exact(8))
        rest = self._recv_exact(length - 8)
        return rest[0], rest[1:]

    def rpc(self, body: bytes) -> tuple[bool, bytes]:
        """(ok, response body or failure text)."""
        self.next_id += 1
        header = struct.pack(">qi", self.next_id, len(body))
        self.sock.sendall(struct.pack(">q", 8 + 1 + len(header) + len(body)) + bytes([3]) + header + body)
        kind, rest = self.recv_frame()
        (request_id,) = struct.unpack(">q", rest[:8])
        assert request_id == self.next_id
        if kind == 4:
            return True, rest[12:]
        assert kind == 5, f"unexpected reply type {kind}"
        (n,) = struct.unpack(">i", rest[8:12])
        return False, rest[12:12 + n]

    def open_stream(self, body: bytes) -> tuple[int, int]:
        ok, reply = self.rpc(body)
        assert ok, reply
        assert reply[0] == 3, f"expected a StreamHandle, got type {reply[0]}"
        return struct.unpack(">qi", reply[1:13])

    def chunk(self, stream_id: int, index: int) -> tuple[bool, bytes]:
        self.sock.sendall(struct.pack(">q", 8 + 1 + 12) + bytes([0]) + struct.pack(">qi", stream_id, index))
        kind, rest = self.recv_frame()
        assert struct.unpack(">qi", rest[:12]) == (stream_id, index)
        if kind == 1:
            return True, rest[12:]
        assert kind == 2, f"unexpected reply type {kind}"
        (n,) = struct.unpack(">i", rest[12:16])
        return False, rest[16:16 + n]

    def send_bad_frame(self):
        """A frame length that is negative: the agent must close without replying."""
        self.sock.sendall(struct.pack(">q", -5) + b"\x03" * 16)

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


# --- Files where an executor writes them (spec §4.1) ---------------------------------------------------------------


def _java_hash(s: str) -> int:
    h = 0
    for ch in s.encode("utf-16-be").hex(" ", 2).split():
        h = (31 * h + int(ch, 16)) & 0xFFFFFFFF
    h = h - (1 << 32) if h >= (1 << 31) else h
    return 0 if h == -(1 << 31) else abs(h)


def block_path(local_dirs: list[str], sub_dirs: int, name: str) -> Path:
    h = _java_hash(name)
    return Path(local_dirs[h % len(local_dirs)]) / f"{(h // len(local_dirs)) % sub_dirs:02x}" / name


def write_map_output(local_dirs: list[str], sub_dirs: int, shuffle_id: int, map_id: int,
                     sizes: list[int]) -> list[bytes]:
    parts = [bytes((shuffle_id * 7 + map_id * 3 + r + i) & 0xFF for i in range(n)) for r, n in enumerate(sizes)]
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    for name, data in ((f"shuffle_{shuffle_id}_{map_id}_0.index", b"".join(struct.pack(">q", o) for o in offsets)),
                       (f"shuffle_{shuffle_id}_{map_id}_0.data", b"".join(parts))):
        path = block_path(local_dirs, sub_dirs, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return parts
