"""Hostile peers next to Spark's real client, and corrupt files on disk.

1. A flood: while Spark's real client (tests/java/ShuffleClientDriver.java) keeps fetching blocks and checking
   their CRC32/SHA-256 against the generator, Python threads send 10,000 random and malformed frames on
   thousands of short connections, and 50 slow-loris connections (one byte every 100 ms) stay open for the whole
   test: half of them declare an 8 MiB frame and trickle it, half send valid requests one byte at a time.
   Checked: every real fetch succeeded, byte-exact, without a single client retry; every hostile connection
   ended (no server-side hang); the hostile peers got only failure replies (never a block); the slow-loris
   connections were still open at the end; the server still serves afterwards. Against the agent also: its
   /metrics counted the bad frames (errors_total{kind="bad_frame"}) and the failure replies, and held every
   slow connection (active_connections).
   The frames are generated from a fixed seed (printed), so a failure can be replayed.

2. Corrupt and truncated index/data files: each bad block fails with a ChunkFetchFailure naming the problem,
   and the good blocks keep working on the same client. Complements test_client_protocol.py (missing index,
   missing data file, reduce id out of range): here an index whose offsets decrease, an index of 12 bytes, of
   one offset, of none, with a negative offset, and a data file truncated after registration (before the first
   fetch, and in place after a fetch). Spark's JVM service checks none of this (it serves whatever the index
   says, lazily), so the exact texts are the agent's; against the JVM only "the bad block fails, the good
   ones keep working" is checked.

3. Hostile handshakes with spark.authenticate on (SASL, and the AuthEngine with SASL fallback): while Spark's
   real client with the right secret keeps fetching and checking blocks, 10,000 connections send random bytes,
   headers claiming huge lengths, garbage handshake RPCs, AuthMessages no secret of ours made, SASL exchanges
   abandoned after the challenge or finished with a wrong password (the DIGEST-MD5 client side is computed
   here), a right-secret SASL login followed by a request for another app, requests before any handshake and
   half-sent handshakes; 50 more connections open and stall for the whole flood. Every connection must get
   exactly the replies its kind calls for, from the agent as from Spark's JVM service; the agent's
   handshakes_total must move by what the plan implies; the server's open fds must come back.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from client_driver import server_text
from servers import agent_metrics_url, scrape_metrics, wait_until
from shuffle_layout import crc32, sha256
from spark_auth import SECRET, client_conf, start_auth_server
from spark_cluster import RETRY_LINE, RETRY_LOG4J2

SEED = int(os.environ.get("HOSTILE_SEED", "20260101"))
TOTAL_FRAMES = 10_000
SLOW_CONNECTIONS = 50
SLOW_TICK_S = 0.1
FLOOD_THREADS = 6
FLOOD_MIN_S = 10.0  # frames are paced over at least this long, so several real-client rounds overlap them
AGENT_MAX_FRAME = 16 << 20  # agent.max.frame.bytes default: larger frames are refused before any allocation
JAVA_MAX_FRAME = 2**31 - 1

TYPE_NAMES = {0: "ChunkFetchRequest", 1: "ChunkFetchSuccess", 2: "ChunkFetchFailure", 3: "RpcRequest",
              4: "RpcResponse", 5: "RpcFailure", 6: "StreamRequest", 7: "StreamResponse", 8: "StreamFailure",
              9: "OneWayMessage", 10: "UploadStream", 11: "MergedBlockMetaRequest", 12: "MergedBlockMetaSuccess"}


# ---------------------------------------------------------------------------------------------------------------
# Frames (spec section 1): i64 frameLength (counts itself) | u8 type | header | body


def frame(type_id: int, payload: bytes) -> bytes:
    return struct.pack(">qB", 9 + len(payload), type_id) + payload


def jstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">i", len(b)) + b


def rpc(request_id: int, body: bytes) -> bytes:
    return frame(3, struct.pack(">qi", request_id, len(body)) + body)


def chunk_request(stream_id: int, chunk: int) -> bytes:
    return frame(0, struct.pack(">qi", stream_id, chunk))


BAD_IDS = ["broadcast_1", "", "shuffle_0_0", "shuffle_a_b_c", "rdd_1", "shuffle_0_0_0_0_0", "rdd_x_y",
           "shuffle_0_9999999999999999999999_0", "../../etc/passwd", "shuffle_0_0_0\x00"]


@dataclass
class Conn:
    """One hostile connection: frames to send (each with the reply it must get, or None), and how it ends."""

    frames: list[tuple[str, bytes, str | None]] = field(default_factory=list)
    # "bad": the last frame can never be valid (both servers close); "bad_agent": valid for the JVM (which waits
    # for the body) but above the agent's frame limit; "partial": a frame cut short, then a polite close;
    # "rst": an abortive close (SO_LINGER 0); "polite": only frames that keep the connection open.
    end: str = "polite"


class Generator:
    def __init__(self, seed: int, app: str):
        self.r = random.Random(seed)
        self.app = app
        self.rid = 0

    def rb(self, lo: int, hi: int) -> bytes:
        return self.r.randbytes(self.r.randint(lo, hi))

    def next_rid(self) -> int:
        self.rid += 1
        return self.rid

    # -- frames after which the connection must stay open, with the reply they must get ----------------------------
    def keep_open(self) -> tuple[str, bytes, str | None]:
        r = self.r
        k = r.randrange(9)
        if k == 0:  # an RPC whose BlockTransferMessage type is unknown or not a request
            t = r.choice([3, 8, 11, 17] + list(range(20, 256)))
            return "rpc_unknown_type", rpc(self.next_rid(), bytes([t]) + self.rb(0, 64)), "RpcFailure"
        if k == 1:  # a known message type, then garbage
            return "rpc_garbage_body", rpc(self.next_rid(), bytes([r.choice([0, 2, 7, 9, 10, 16])]) +
                                           self.rb(0, 120)), "RpcFailure"
        if k == 2:  # lengths claiming 2^31-1 elements that are not there (must be refused before allocating)
            n = 0x7FFFFFFF
            bodies = [
                b"\x00" + jstr(self.app) + jstr("0") + struct.pack(">i", n),  # OpenBlocks, blockIds
                b"\x02" + jstr(self.app) + jstr("x") + struct.pack(">i", n),  # RegisterExecutor, localDirs
                b"\x09" + jstr(self.app) + jstr("0") + struct.pack(">ii", 0, n),  # FetchShuffleBlocks, mapIds
                b"\x0a" + jstr(self.app) + struct.pack(">i", n),  # GetLocalDirsForExecutors, execIds
                b"\x00" + struct.pack(">i", n) + b"app",  # OpenBlocks, appId length
            ]
            return "rpc_huge_count", rpc(self.next_rid(), r.choice(bodies)), "RpcFailure"
        if k == 3:  # well-formed OpenBlocks for the real client's app and executor, with ids that cannot be
            ids = r.sample(BAD_IDS, r.randint(1, 3)) + (["shuffle_0_0_0"] if r.random() < 0.5 else [])
            r.shuffle(ids)
            body = b"\x00" + jstr(self.app) + jstr("0") + struct.pack(">i", len(ids)) + b"".join(jstr(i) for i in ids)
            return "open_blocks_bad_ids", rpc(self.next_rid(), body), "RpcFailure"
        if k == 4:
            return "chunk_random_stream", chunk_request(r.getrandbits(63), r.randint(-5, 1000)), "ChunkFetchFailure"
        if k == 5:
            sid = r.choice([f"{r.getrandbits(63)}_{r.randint(0, 9)}", "", "_", "x_1", f"{r.getrandbits(63)}",
                            f"-1_{r.randint(0, 3)}"])
            return "stream_random", frame(6, jstr(sid)), "StreamFailure"
        if k == 6:  # one-way garbage: no reply
            return "oneway_garbage", frame(9, struct.pack(">i", 0) + self.rb(0, 64)), None
        if k == 7:  # responses sent to a server are ignored
            return "response_to_server", r.choice([
                frame(4, struct.pack(">qi", r.getrandbits(63), 3) + b"abc"),
                frame(5, struct.pack(">q", r.getrandbits(63)) + jstr("boom")),
                frame(2, struct.pack(">qi", r.getrandbits(63), 0) + jstr("boom")),
                frame(1, struct.pack(">qi", r.getrandbits(63), 0) + self.rb(0, 32)),
            ]), None
        # An empty RPC body (no message type at all).
        return "rpc_empty_body", rpc(self.next_rid(), b""), "RpcFailure"

    # -- frames that end the connection ----------------------------------------------------------------------------
    def bad(self) -> tuple[str, str, bytes]:
        """(name, end, bytes). end is "bad" (both servers must close) or "bad_agent" (agent limit only)."""
        r = self.r
        k = r.randrange(9)
        if k == 0:
            return "len_zero", "bad", bytes(8) + self.rb(0, 16)
        if k == 1:
            return "len_8_empty_frame", "bad", struct.pack(">q", 8)
        if k == 2:
            return "len_negative", "bad", struct.pack(">q", -r.randint(1, 2**63 - 1)) + self.rb(0, 16)
        if k == 3:
            return "len_above_java_max", "bad", struct.pack(">qB", r.randint(JAVA_MAX_FRAME + 9, 2**63 - 1), 3)
        if k == 4:
            return "unknown_transport_type", "bad", frame(r.randint(13, 255), self.rb(0, 32))
        if k == 5:  # a complete frame whose header is cut short
            return "short_header", "bad", r.choice([
                frame(0, self.rb(0, 11)), frame(3, self.rb(0, 11)), frame(6, self.rb(0, 3)),
                frame(5, self.rb(0, 7)), frame(9, self.rb(0, 3)),
            ])
        if k == 6:  # a string whose length is negative
            return "negative_string_length", "bad", r.choice([
                frame(6, struct.pack(">i", -r.randint(1, 2**31))),
                frame(2, struct.pack(">qii", 1, 0, -r.randint(1, 2**31))),
            ])
        if k == 7:
            while True:
                b = self.rb(8, 64)
                flen = struct.unpack(">q", b[:8])[0]
                if flen <= 8 or flen > JAVA_MAX_FRAME + 8:
                    return "random_bytes", "bad", b
        return ("len_above_agent_limit", "bad_agent",
                struct.pack(">qB", r.randint(AGENT_MAX_FRAME + 10, JAVA_MAX_FRAME), 3) + self.rb(0, 64))

    def connection(self, budget: int) -> Conn:
        r = self.r
        c = Conn()
        for _ in range(min(r.randint(0, 4), budget)):
            c.frames.append(self.keep_open())
        if len(c.frames) >= budget:
            return c
        x = r.random()
        if x < 0.6:
            name, c.end, b = self.bad()
            c.frames.append((name, b, None))
        elif x < 0.75:
            whole = rpc(self.next_rid(), self.rb(1, 200))
            c.frames.append(("partial_frame", whole[:r.randint(1, len(whole) - 1)], None))
            c.end = "partial"
        elif x < 0.85:
            c.frames.append(("rst_after_garbage", self.rb(1, 64), None))
            c.end = "rst"
        return c

    def plan(self, total: int) -> list[Conn]:
        conns, n = [], 0
        while n < total:
            c = self.connection(total - n)
            n += len(c.frames)
            conns.append(c)
        return conns


def read_frames(buf: bytes) -> tuple[list[str], int]:
    """Transport types of the complete frames in `buf` (replies from the server), and the bytes left over."""
    out, p = [], 0
    while len(buf) - p >= 9:
        flen = struct.unpack(">q", buf[p:p + 8])[0]
        if flen < 9 or len(buf) - p < flen:
            break
        out.append(TYPE_NAMES.get(buf[p + 8], f"type{buf[p + 8]}"))
        p += flen
    return out, len(buf) - p


@dataclass
class Outcome:
    conn: Conn
    replies: list[str] = field(default_factory=list)
    closed_by: str = ""  # "eof" | "reset" | "timeout" | "rst-sent" | "connect-failed: ..."


def run_connection(host: str, port: int, c: Conn) -> Outcome:
    o = Outcome(c)
    try:
        s = socket.create_connection((host, port), timeout=5)
    except OSError as e:
        o.closed_by = f"connect-failed: {e!r}"
        return o
    with s:
        try:
            s.sendall(b"".join(b for _, b, _ in c.frames))
            if c.end == "rst":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                o.closed_by = "rst-sent"
                return o
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            buf = b""
            while True:
                d = s.recv(65536)
                if not d:
                    o.closed_by = "eof"
                    break
                buf += d
        except socket.timeout:
            o.closed_by = "timeout"
        except (ConnectionResetError, BrokenPipeError):
            o.closed_by = "reset"
        o.replies, _ = read_frames(buf if o.closed_by != "rst-sent" else b"")
        return o


class Flood:
    """The short-connection flood: FLOOD_THREADS workers over a fixed plan, paced over >= FLOOD_MIN_S."""

    def __init__(self, host: str, port: int, plan: list[Conn]):
        self.host, self.port, self.plan = host, port, plan
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.next = 0
        self.sent_frames = 0
        self.total = sum(len(c.frames) for c in plan)
        self.done = threading.Event()
        self.t0 = self.t1 = 0.0

    def _worker(self):
        while True:
            with self.lock:
                if self.next >= len(self.plan):
                    return
                c = self.plan[self.next]
                self.next += 1
                due = self.t0 + FLOOD_MIN_S * self.sent_frames / self.total
                self.sent_frames += len(c.frames)
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing, not waiting for a condition
            o = run_connection(self.host, self.port, c)
            with self.lock:
                self.outcomes.append(o)

    def start(self) -> "Flood":
        self.t0 = time.monotonic()
        self.threads = [threading.Thread(target=self._worker, name=f"flood-{i}", daemon=True)
                        for i in range(FLOOD_THREADS)]
        for t in self.threads:
            t.start()
        threading.Thread(target=self._finish, name="flood-join", daemon=True).start()
        return self

    def _finish(self):
        for t in self.threads:
            t.join()
        self.t1 = time.monotonic()
        self.done.set()


class SlowLoris:
    """SLOW_CONNECTIONS connections, one byte each every SLOW_TICK_S, until stopped. Half declare an 8 MiB frame
    and trickle its body (never complete); half trickle valid ChunkFetchRequests for unknown streams (each
    completes after 21 bytes and must be answered with a ChunkFetchFailure)."""

    def __init__(self, host: str, port: int, seed: int):
        self.r = random.Random(seed)
        self.socks: list[socket.socket] = []
        self.kind: list[str] = []
        self.scripts: list[bytearray] = []
        self.sent = [0] * SLOW_CONNECTIONS
        self.inbox = [b""] * SLOW_CONNECTIONS
        self.closed: dict[int, str] = {}
        self.stop_ev = threading.Event()
        for i in range(SLOW_CONNECTIONS):
            s = socket.create_connection((host, port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            self.socks.append(s)
            if i % 2 == 0:
                self.kind.append("large_declared_frame")
                body_len = 8 << 20
                hdr = struct.pack(">qBqi", 9 + 12 + body_len, 3, 1, body_len)
                self.scripts.append(bytearray(hdr + self.r.randbytes(400)))
            else:
                self.kind.append("byte_by_byte_requests")
                self.scripts.append(bytearray(b"".join(chunk_request(self.r.getrandbits(63), 0) for _ in range(40))))
        self.thread = threading.Thread(target=self._run, name="slow-loris", daemon=True)

    def start(self) -> "SlowLoris":
        self.thread.start()
        return self

    def _run(self):
        while not self.stop_ev.wait(SLOW_TICK_S):
            for i, s in enumerate(self.socks):
                if i in self.closed:
                    continue
                try:
                    if self.sent[i] < len(self.scripts[i]):
                        s.send(self.scripts[i][self.sent[i]:self.sent[i] + 1])
                        self.sent[i] += 1
                    while True:
                        d = s.recv(65536)
                        if not d:
                            self.closed[i] = "eof"
                            break
                        self.inbox[i] += d
                except BlockingIOError:
                    pass
                except OSError as e:
                    self.closed[i] = repr(e)

    def stop(self) -> dict:
        self.stop_ev.set()
        self.thread.join(timeout=10)
        replies = Counter()
        for i in range(SLOW_CONNECTIONS):
            types, _ = read_frames(self.inbox[i])
            replies.update(f"{self.kind[i]}:{t}" for t in types)
        still_open = SLOW_CONNECTIONS - len(self.closed)
        for s in self.socks:
            s.close()
        return {"still_open": still_open, "closed": dict(self.closed), "bytes_sent": sum(self.sent),
                "replies": dict(replies)}


# ---------------------------------------------------------------------------------------------------------------
# The real client's rounds


SIZES = [10, 5_000, 0, 100_000, 70_000, 3]  # 100_000 and 70_000 go out with sendfile on the agent
MAPS = 4


def agent_rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    st = {}
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            k, _, v = ln.partition(":")
            st[k] = v.strip()
    return int(st["VmRSS"].split()[0]), int(st["VmHWM"].split()[0])


@pytest.fixture(scope="module")
def retry_log4j2(tmp_path_factory):
    p = tmp_path_factory.mktemp("hostile-log") / "log4j2-retry.properties"
    p.write_text(RETRY_LOG4J2)
    return p


def test_real_client_keeps_fetching_correct_data_through_a_flood_of_malformed_frames_and_slow_loris(
        shuffle_client, make_exec_dirs, ess, server_kind, retry_log4j2):
    ex = make_exec_dirs("exec0")
    mos = [ex.write_map_output(0, m, SIZES, checksum_algorithms=()) for m in range(MAPS)]
    expected = {f"shuffle_0_{m}_{r}": mos[m].block(r) for m in range(MAPS) for r in range(len(SIZES))}
    c = shuffle_client
    ids_of = {m: [f"shuffle_0_{m}_{r}" for r in range(len(SIZES))] for m in range(MAPS)}
    fetches_per_round = 2 * 2 * MAPS
    steps = [c.register_step("0", ex)]
    for _ in range(2):
        steps += [c.fetch_step("0", ids_of[m]) for m in range(MAPS)]
    steps.append(["load", "--exec", "0", "--ids", ",".join(ids_of[0]), "--concurrency", "4", "--count", "300",
                  "--seconds", "20"])
    for _ in range(2):
        steps += [c.fetch_step("0", ids_of[m]) for m in range(MAPS)]
    load_step = 1 + 2 * MAPS

    def check_round(res) -> dict:
        assert res.one(0)["ok"], res.debug()
        n_blocks = 0
        for i in list(range(1, load_step)) + list(range(load_step + 1, len(steps))):
            got = res.blocks(i)
            s = res.summary(i)
            assert s["ok_count"] == len(SIZES) and not s["timeout"], f"step {i}: {s}\n{res.debug()}"
            for bid, rec in got.items():
                data = expected[bid]
                assert rec["ok"], f"{bid}: {rec}"
                assert (rec["len"], rec["crc32"], rec["sha256"]) == (len(data), crc32(data), sha256(data)), rec
                n_blocks += 1
        load = res.one(load_step)
        assert load["failures"] == 0 and load["len_mismatches"] == 0 and load["drained"], load
        assert load["calls_completed"] == load["calls_issued"] == 300, load
        assert load["blocks"] == 300 * len(SIZES) and load["bytes"] == 300 * sum(SIZES), load
        retries = [ln for ln in res.stderr.splitlines() if RETRY_LINE.search(ln)]
        assert not retries, f"the real client had to retry next to the hostile peers:\n" + "\n".join(retries)
        return {"fetched_blocks": n_blocks, "load_blocks": load["blocks"]}

    def one_round():
        t0 = time.monotonic()
        res = c.run(*steps, timeout_s=60, jvm_opts=[f"-Dlog4j2.configurationFile={retry_log4j2}"])
        return t0, time.monotonic(), check_round(res)

    is_agent = server_kind == "agent"
    url = agent_metrics_url(ess) if is_agent else None
    before = scrape_metrics(url) if is_agent else {}
    rss0 = agent_rss_kib(ess.proc.pid) if is_agent else None

    plan = Generator(SEED, c.app).plan(TOTAL_FRAMES)
    assert sum(len(x.frames) for x in plan) == TOTAL_FRAMES
    loris = SlowLoris(ess.host, ess.port, SEED + 1).start()
    if is_agent:
        wait_until(lambda: scrape_metrics(url).get("spark_shuffle_agent_active_connections", 0) >= SLOW_CONNECTIONS,
                   20, 0.05, "the agent to hold every slow-loris connection")
    rounds: list[tuple[float, float, dict]] = []
    errors: list[BaseException] = []
    flood = Flood(ess.host, ess.port, plan)

    def client_loop():
        # Rounds back to back until the flood is over, then one more (bounded: at most 8 rounds).
        try:
            while len(rounds) < 8:
                flood_over = flood.done.is_set()
                rounds.append(one_round())
                if flood_over:
                    return
        except BaseException as e:
            errors.append(e)

    client = threading.Thread(target=client_loop, name="real-client", daemon=True)
    client.start()
    flood.start()
    samples = []

    def sample():
        if is_agent:
            m = scrape_metrics(url)
            samples.append((m.get("spark_shuffle_agent_active_connections", 0), agent_rss_kib(ess.proc.pid)))
        return flood.done.is_set()

    wait_until(sample, 120, 0.5, "the flood to finish")
    client.join(timeout=180)
    assert not client.is_alive(), "the real client's rounds did not finish"
    slow = loris.stop()
    assert not errors, f"real client failed during the flood: {errors[0]!r}"

    # -- the hostile side ------------------------------------------------------------------------------------------
    outs = flood.outcomes
    assert len(outs) == len(plan)
    ends = Counter(o.conn.end for o in outs)
    closed_by = Counter(o.closed_by.split(":")[0] for o in outs)
    kinds = Counter(name for o in outs for name, _, _ in o.conn.frames)
    got = Counter(t for o in outs for t in o.replies)
    print(f"\n[hostile] seed {SEED}: {TOTAL_FRAMES} frames on {len(outs)} connections in {flood.t1 - flood.t0:.1f}s; "
          f"ends {dict(ends)}; closed by {dict(closed_by)}\n[hostile] frame kinds {dict(sorted(kinds.items()))}"
          f"\n[hostile] replies {dict(got)}\n[slow-loris] {slow}")
    assert not [o for o in outs if o.closed_by.startswith("connect-failed")], "the server stopped accepting"
    hung = [o for o in outs if o.closed_by == "timeout"]
    assert not hung, f"{len(hung)} hostile connections were neither answered nor closed: {hung[0]}"
    leaked = {t for t in got if t in ("ChunkFetchSuccess", "StreamResponse", "RpcResponse")}
    assert not leaked, f"hostile requests got successful replies: {got}"
    # Polite connections (half-closed by us, then read to the end) must get exactly the replies their frames
    # call for, in order: the server answers every request before the frame that ends the connection.
    exact = 0
    for o in outs:
        if o.closed_by != "eof" or (o.conn.end == "bad_agent" and not is_agent):
            continue
        want = [w for _, _, w in o.conn.frames if w]
        if is_agent:
            assert o.replies == want, f"replies {o.replies} != {want} for {[n for n, _, _ in o.conn.frames]}"
            exact += 1
        else:  # the JVM answers chunk requests on a separate thread pool: order and completeness may vary
            assert Counter(o.replies) <= Counter(want), (o.replies, want)
    print(f"[hostile] {exact} polite connections got exactly the replies their frames call for, in order")
    assert slow["still_open"] == SLOW_CONNECTIONS, f"slow-loris connections were closed: {slow['closed']}"
    assert slow["replies"].get("byte_by_byte_requests:ChunkFetchFailure", 0) >= SLOW_CONNECTIONS // 2, slow

    # -- the real client ---------------------------------------------------------------------------------------------
    overlapping = [r for r in rounds if r[0] < flood.t1 and r[1] > flood.t0]
    print(f"[real client] {len(rounds)} rounds, {len(overlapping)} overlapping the flood; "
          f"{sum(r[2]['fetched_blocks'] for r in rounds)} blocks fetched with digests, "
          f"{sum(r[2]['load_blocks'] for r in rounds)} by load, all correct; round seconds "
          f"{[round(r[1] - r[0], 1) for r in rounds]}")
    assert overlapping, "the real client's rounds did not overlap the flood"
    # Still alive and serving afterwards, byte-exact.
    assert ess.alive(), ess.log_tail()
    t0, t1, last = one_round()

    if not is_agent:
        return
    after = scrape_metrics(url)

    def delta(name):
        return after.get(name, 0) - before.get(name, 0)

    bad_frames = delta('spark_shuffle_agent_errors_total{kind="bad_frame"}')
    must_bad = sum(1 for o in outs if o.conn.end in ("bad", "bad_agent") and o.closed_by == "eof")
    may_bad = sum(1 for o in outs if o.conn.end in ("bad", "bad_agent", "rst", "partial"))
    conns = delta("spark_shuffle_agent_connections_total")
    rpc_f = delta('spark_shuffle_agent_errors_total{kind="rpc_failure"}')
    chunk_f = delta('spark_shuffle_agent_errors_total{kind="chunk_failure"}')
    active = [a for a, _ in samples]
    rss = [r for _, (r, _) in samples]
    rss1 = agent_rss_kib(ess.proc.pid)
    print(f"[agent metrics] bad_frame +{bad_frames:.0f} (connections that had to end on a bad frame: {must_bad}, "
          f"could have: {may_bad}); connections +{conns:.0f}; rpc_failure +{rpc_f:.0f}; chunk_failure "
          f"+{chunk_f:.0f}; active connections during the flood min {min(active):.0f} max {max(active):.0f}; "
          f"RSS KiB before {rss0[0]} during max {max(rss)} after {rss1[0]} (HWM {rss1[1]})")
    assert must_bad <= bad_frames <= may_bad, (bad_frames, must_bad, may_bad)
    assert conns >= len(outs) + SLOW_CONNECTIONS, conns
    assert rpc_f >= got["RpcFailure"] and chunk_f >= got["ChunkFetchFailure"] + got["StreamFailure"], (rpc_f, chunk_f)
    assert min(active) >= SLOW_CONNECTIONS, f"the agent did not hold every slow connection: {active}"
    # 25 connections each declared an 8 MiB frame and sent a few hundred bytes of it: the agent must not have
    # committed memory for the declared sizes (25 x 8 MiB = 200 MiB).
    assert max(rss) - rss0[0] < 100 * 1024, f"RSS grew from {rss0[0]} KiB to {max(rss)} KiB"
    wait_until(lambda: scrape_metrics(url).get("spark_shuffle_agent_active_connections", 99) == 0, 20, 0.1,
               "every hostile connection to be gone from active_connections")


# ---------------------------------------------------------------------------------------------------------------
# Corrupt and truncated files


def write_index(path: str, offsets: list[int] | None = None, raw: bytes | None = None):
    with open(path, "wb") as f:
        f.write(raw if raw is not None else b"".join(struct.pack(">q", o) for o in offsets))


def test_corrupt_indexes_and_truncated_data_fail_only_their_blocks(shuffle_client, make_exec_dirs, server_kind):
    """Each bad block is fetched in its own call (the first failed chunk fails the rest of a call), followed on
    the same client by a good block; the good blocks must all arrive intact."""
    ex = make_exec_dirs("exec0")
    good = ex.write_map_output(0, 0, [13, 90_000, 7], checksum_algorithms=())
    s = 4
    mo = [ex.write_map_output(s, m, [10, 20, 30], checksum_algorithms=()) for m in range(5)]
    write_index(mo[0].index_path, [0, 10, 5, 60])  # offsets decrease
    write_index(mo[1].index_path, raw=struct.pack(">qi", 0, 10))  # 12 bytes
    write_index(mo[2].index_path, [0])  # one offset: no partition
    write_index(mo[3].index_path, raw=b"")  # empty
    write_index(mo[4].index_path, [0, -5, 60])  # negative offset
    trunc = ex.write_map_output(s, 5, [100, 200], checksum_algorithms=())
    c = shuffle_client
    c.register("0", ex)
    # Truncated after registration, before any fetch of it.
    os.truncate(trunc.data_path, 150)

    def corrupt(m: int, reason: str) -> str:
        return f"java.lang.RuntimeException: Shuffle index file {mo[m].index_path} is corrupt: {reason}"

    cases = [
        (f"shuffle_{s}_0_1", corrupt(0, "offset 2 (5) is below offset 1 (10)")),
        (f"shuffle_{s}_1_0", corrupt(1, "size 12 is not a multiple of 8")),
        (f"shuffle_{s}_2_0", corrupt(2, "1 offsets, need at least 2")),
        (f"shuffle_{s}_3_0", corrupt(3, "0 offsets, need at least 2")),
        (f"shuffle_{s}_4_0", corrupt(4, "offset 1 is negative (-5)")),
        (f"shuffle_{s}_5_1", f"java.lang.RuntimeException: Shuffle data file {trunc.data_path} is truncated: "
                             f"index expects 300 bytes, file has 150"),
    ]
    goods = ["shuffle_0_0_0", "shuffle_0_0_1", "shuffle_0_0_2"]
    steps = []
    for i, (bid, _) in enumerate(cases):
        steps += [c.fetch_step("0", [bid]), c.fetch_step("0", [goods[i % 3]])]
    steps.append(c.fetch_step("0", [f"shuffle_{s}_5_0"]))  # the part of the truncated file that is still there
    conf = {"spark.shuffle.io.maxRetries": "1", "spark.shuffle.io.retryWait": "100ms"}
    res = c.run(*steps, conf=conf)
    for i, (bid, text) in enumerate(cases):
        rec = res.blocks(2 * i)[bid]
        assert not rec["ok"], f"{bid} was served: {rec}"
        if server_kind == "agent":
            assert rec["error_class"].endswith("ChunkFetchFailureException"), rec
            assert server_text(rec) == text, f"{bid}: {server_text(rec)!r} != {text!r}"
        g = goods[i % 3]
        data = good.block(int(g.rsplit("_", 1)[1]))
        rec = res.blocks(2 * i + 1)[g]
        assert rec["ok"] and (rec["len"], rec["sha256"]) == (len(data), sha256(data)), f"after {bid}: {rec}"
    rec = res.blocks(len(cases) * 2)[f"shuffle_{s}_5_0"]
    assert rec["ok"] and rec["sha256"] == sha256(trunc.block(0)), rec


@pytest.mark.parametrize("sizes", [[1_000, 2_000], [100, 200_000]], ids=["small-block", "sendfile-block"])
def test_data_file_truncated_in_place_after_a_fetch_fails_with_a_clear_chunk_fetch_failure(
        shuffle_client, make_exec_dirs, server_kind, sizes):
    """A map output is fetched (so the server may hold its files open or cached), then its data file is
    truncated IN PLACE (same inode) so the second block no longer fits. The block must fail and the first block
    keep working. On the agent the failure must be a ChunkFetchFailure naming the truncation, at the latest
    once its open-file cache revalidates (a bounded poll); the JVM service opens lazily and drops the
    connection instead (its client then fails the block after its retries)."""
    ex = make_exec_dirs("exec0")
    mo = ex.write_map_output(6, 0, sizes, checksum_algorithms=())
    c = shuffle_client
    ids = ["shuffle_6_0_0", "shuffle_6_0_1"]
    conf = {"spark.shuffle.io.maxRetries": "1", "spark.shuffle.io.retryWait": "100ms"}
    res = c.run(c.register_step("0", ex), c.fetch_step("0", ids), conf=conf)
    for bid, r in zip(ids, (0, 1)):
        rec = res.blocks(1)[bid]
        assert rec["ok"] and rec["sha256"] == sha256(mo.block(r)), rec
    cut = sizes[0] + sizes[1] // 2
    os.truncate(mo.data_path, cut)
    want = (f"java.lang.RuntimeException: Shuffle data file {mo.data_path} is truncated: index expects "
            f"{sum(sizes)} bytes, file has {cut}")
    seen = []

    def attempt():
        r = c.run(c.fetch_step("0", ["shuffle_6_0_1"]), c.fetch_step("0", ["shuffle_6_0_0"]), conf=conf)
        bad, ok = r.blocks(0)["shuffle_6_0_1"], r.blocks(1)["shuffle_6_0_0"]
        assert not bad["ok"], f"the truncated block was served: {bad}"
        assert ok["ok"] and ok["sha256"] == sha256(mo.block(0)), ok
        seen.append((round(time.monotonic() - t0, 1), bad["error_class"], server_text(bad)))
        return server_kind != "agent" or server_text(bad) == want

    t0 = time.monotonic()
    deadline = t0 + 12  # several times the open-file cache's revalidation period (2 s)
    while not attempt() and time.monotonic() < deadline:
        pass
    print(f"\n[truncated in place, {sizes}] attempts (seconds after truncation, class, server text): {seen}")
    assert server_kind != "agent" or seen[-1][2] == want, (
        f"{len(seen)} fetches over {seen[-1][0]}s after the in-place truncation never got the truncation "
        f"ChunkFetchFailure {want!r}; last: {seen[-1][1]}: {seen[-1][2]!r}")


# ---------------------------------------------------------------------------------------------------------------
# Hostile handshakes against a server with spark.authenticate on (spec section 6, auth.md section 3)

HANDSHAKES = 10_000
STALLS = 50
HS_THREADS = 6
HS_MIN_S = 10.0  # paced over at least this long, so the real client's rounds overlap the flood


def sasl_password(secret: str) -> str:
    """SparkSaslServer.encodePassword: Netty's Base64, which breaks lines every 76 characters."""
    b = base64.b64encode(secret.encode()).decode()
    return "\n".join(b[i:i + 76] for i in range(0, len(b), 76))


SASL_PASSWORD = sasl_password(SECRET)
WRONG_PASSWORD = sasl_password("not-" + SECRET)
SASL_USER = base64.b64encode(b"sparkSaslUser").decode()
DIGEST_URI = "null/default"  # SparkSaslClient: no protocol, server name "default"
OTHER_APP = "app-20260101000000-9999"

# (kind, weight). What each does is in HandshakeConn.run; what the server must answer is in expect().
HS_KINDS = [
    ("random_bytes", 14),  # bytes that are no frame at all (length <= 8 or above every limit)
    ("huge_length", 10),  # a valid RpcRequest header claiming 16 MiB .. 2^62 bytes, then a few bytes
    ("garbage_rpc", 16),  # 1-3 complete RpcRequests whose bodies are neither AuthMessage nor SaslMessage
    ("auth_bad_key", 16),  # AuthMessages (right shape) whose ciphertext no secret of ours made, any app id
    ("sasl_abandoned", 14),  # SASL: the challenge, then gone (half-close or RST)
    ("sasl_wrong_secret", 12),  # a complete DIGEST-MD5 response computed with another password
    ("sasl_ok_other_app", 3),  # the right secret (checked through rspauth), then OpenBlocks for another app
    ("requests_before_auth", 8),  # ChunkFetch, Stream, OneWay, ChunkFetch before any handshake
    ("partial_handshake", 7),  # a handshake RpcRequest cut short, then half-close
]


def sasl_message(app: str, token: bytes) -> bytes:
    return b"\xea" + jstr(app) + struct.pack(">i", len(token)) + token


def auth_message(app: str, salt: bytes, ciphertext: bytes) -> bytes:
    return b"\xfb" + jstr(app) + struct.pack(">i", len(salt)) + salt + struct.pack(">i", len(ciphertext)) + ciphertext


def directives(token: bytes) -> dict[str, str]:
    out = {}
    for m in re.finditer(r'([\w-]+)=("((?:[^"\\]|\\.)*)"|[^,]*)', token.decode()):
        out[m.group(1).lower()] = m.group(3) if m.group(3) is not None else m.group(2)
    return out


def digest_response(challenge: bytes, password: str, cnonce: str) -> tuple[str, str]:
    """RFC 2831 md5-sess, qop=auth, as the JDK's DIGEST-MD5 client computes it: (response token, rspauth)."""
    d = directives(challenge)
    nonce, realm = d["nonce"], d.get("realm", "default")
    inner = hashlib.md5(f"{SASL_USER}:{realm}:{password}".encode()).digest()
    ha1 = hashlib.md5(inner + f":{nonce}:{cnonce}".encode()).hexdigest()

    def kd(a2: str) -> str:
        ha2 = hashlib.md5(a2.encode()).hexdigest()
        return hashlib.md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}".encode()).hexdigest()

    token = (f'charset=utf-8,username="{SASL_USER}",realm="{realm}",nonce="{nonce}",nc=00000001,'
             f'cnonce="{cnonce}",digest-uri="{DIGEST_URI}",maxbuf=65536,response={kd("AUTHENTICATE:" + DIGEST_URI)},'
             f"qop=auth")
    return token, "rspauth=" + kd(":" + DIGEST_URI)


class FrameReader:
    """Reads whole reply frames off a blocking socket: (type name, frame bytes after the type byte)."""

    def __init__(self, s: socket.socket):
        self.s, self.buf = s, b""

    def next(self) -> tuple[str, bytes] | None:
        """The next frame, or None at EOF."""
        while True:
            if len(self.buf) >= 9:
                flen = struct.unpack(">q", self.buf[:8])[0]
                if len(self.buf) >= flen:
                    f, self.buf = self.buf[:flen], self.buf[flen:]
                    return TYPE_NAMES.get(f[8], f"type{f[8]}"), f[9:]
            d = self.s.recv(65536)
            if not d:
                return None
            self.buf += d


def rpc_reply_body(kind: str, payload: bytes) -> bytes:
    """RpcResponse: i64 id, i32 body length, body. RpcFailure: i64 id, Str error."""
    if kind == "RpcResponse":
        return payload[12:]
    (n,) = struct.unpack(">i", payload[8:12])
    return payload[12:12 + n]


@dataclass
class HsResult:
    kind: str
    replies: list[str] = field(default_factory=list)
    end: str = ""  # "eof" (the server closed, or answered our half-close), "rst-sent", "timeout", "reset", ...
    problems: list[str] = field(default_factory=list)
    rpcs: int = 0  # handshake RpcRequests sent (garbage_rpc: 1-3)
    seconds: float = 0.0  # connect to close, for information


class HandshakeConn:
    """One hostile connection of a kind; its bytes come from a per-connection seeded Random."""

    def __init__(self, kind: str, seed: int, app: str):
        self.kind, self.r, self.app = kind, random.Random(seed), app

    def run(self, host: str, port: int) -> HsResult:
        res = HsResult(self.kind)
        t0 = time.monotonic()
        try:
            s = socket.create_connection((host, port), timeout=10)
        except OSError as e:
            res.end = f"connect-failed: {e!r}"
            return res
        with s:
            try:
                getattr(self, self.kind)(s, FrameReader(s), res)
                if res.end == "":
                    s.shutdown(socket.SHUT_WR)
                    rd = FrameReader(s)
                    while (f := rd.next()) is not None:
                        res.replies.append(f[0])
                    res.end = "eof"
            except socket.timeout:
                res.end = "timeout"
            except (ConnectionResetError, BrokenPipeError):
                res.end = "reset"
        res.seconds = time.monotonic() - t0
        return res

    def _reply(self, rd: FrameReader, res: HsResult) -> tuple[str, bytes] | None:
        f = rd.next()
        if f is None:
            res.end = "eof"
        else:
            res.replies.append(f[0])
        return f

    def _rst(self, s: socket.socket, res: HsResult):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        res.end = "rst-sent"

    def _rid(self) -> int:
        return self.r.getrandbits(62)

    # -- the kinds -------------------------------------------------------------------------------------------------
    def random_bytes(self, s, rd, res):
        while True:
            b = self.r.randbytes(self.r.randint(8, 64))
            flen = struct.unpack(">q", b[:8])[0]
            if flen <= 8 or flen > JAVA_MAX_FRAME + 8:
                break
        s.sendall(b)

    def huge_length(self, s, rd, res):
        flen = self.r.choice([self.r.randint(AGENT_MAX_FRAME + 10, JAVA_MAX_FRAME), self.r.randint(2**31, 2**62)])
        s.sendall(struct.pack(">qB", flen, 3) + struct.pack(">qi", self._rid(), min(flen - 21, 2**31 - 1)) + self.r.randbytes(64))

    def garbage_rpc(self, s, rd, res):
        res.rpcs = self.r.randint(1, 3)
        for _ in range(res.rpcs):
            first = self.r.choice([b for b in range(256) if b not in (0xEA, 0xFB)])
            s.sendall(rpc(self._rid(), bytes([first]) + self.r.randbytes(self.r.randint(0, 80))))
        for _ in range(res.rpcs):
            if self._reply(rd, res) is None:
                return

    def auth_bad_key(self, s, rd, res):
        app = self.r.choice([self.app, OTHER_APP, f"spark-{self.r.getrandbits(128):032x}"])
        s.sendall(rpc(self._rid(), auth_message(app, self.r.randbytes(16), self.r.randbytes(60))))
        self._reply(rd, res)

    def _challenge(self, s, rd, res) -> bytes | None:
        s.sendall(rpc(self._rid(), sasl_message(self.app, b"")))
        f = self._reply(rd, res)
        if f is None or f[0] != "RpcResponse":
            return None
        ch = rpc_reply_body(*f)
        if "nonce" not in directives(ch):
            res.problems.append(f"no nonce in the challenge {ch[:200]!r}")
            return None
        return ch

    def sasl_abandoned(self, s, rd, res):
        if self._challenge(s, rd, res) is not None and self.r.random() < 0.5:
            self._rst(s, res)

    def sasl_wrong_secret(self, s, rd, res):
        ch = self._challenge(s, rd, res)
        if ch is None:
            return
        token, _ = digest_response(ch, WRONG_PASSWORD, base64.b64encode(self.r.randbytes(24)).decode())
        s.sendall(rpc(self._rid(), sasl_message(self.app, token.encode())))
        f = self._reply(rd, res)
        if f is not None and "Mismatched response" not in rpc_reply_body(*f).decode(errors="replace"):
            res.problems.append(f"wrong secret answered {f[0]} {rpc_reply_body(*f)[:200]!r}")

    def sasl_ok_other_app(self, s, rd, res):
        ch = self._challenge(s, rd, res)
        if ch is None:
            return
        token, rspauth = digest_response(ch, SASL_PASSWORD, base64.b64encode(self.r.randbytes(24)).decode())
        s.sendall(rpc(self._rid(), sasl_message(self.app, token.encode())))
        f = self._reply(rd, res)
        if f is None or f[0] != "RpcResponse":
            return
        if rpc_reply_body(*f).decode(errors="replace") != rspauth:
            res.problems.append(f"rspauth {rpc_reply_body(*f)[:100]!r} != {rspauth!r}")
        body = b"\x00" + jstr(OTHER_APP) + jstr("0") + struct.pack(">i", 1) + jstr("shuffle_0_0_0")
        s.sendall(rpc(self._rid(), body))
        f = self._reply(rd, res)
        if f is not None and f"not authorized for application {OTHER_APP}" not in rpc_reply_body(*f).decode("utf-8",
                                                                                                             "replace"):
            res.problems.append(f"OpenBlocks for another app answered {f[0]} {rpc_reply_body(*f)[:200]!r}")

    def requests_before_auth(self, s, rd, res):
        s.sendall(chunk_request(self.r.getrandbits(63), 0) + frame(6, jstr(f"{self.r.getrandbits(63)}_0")) +
                  frame(9, struct.pack(">i", 0) + self.r.randbytes(16)) + chunk_request(self.r.getrandbits(63), 1))
        for _ in range(3):
            if self._reply(rd, res) is None:
                return

    def partial_handshake(self, s, rd, res):
        body = (sasl_message(self.app, b"") if self.r.random() < 0.5 else
                auth_message(self.app, self.r.randbytes(16), self.r.randbytes(60)))
        whole = rpc(self._rid(), body)
        s.sendall(whole[:self.r.randint(1, len(whole) - 1)])


def expect(kind: str, mode: str, rpcs: int) -> tuple[list[str], Counter]:
    """The replies a connection of `kind` must get (in order), and the handshakes_total outcomes it moves."""
    if kind in ("random_bytes", "huge_length", "partial_handshake"):
        return [], Counter()
    if kind == "garbage_rpc":  # "Expected SaslMessage ..." (crypto mode: after the fallback to SASL)
        return ["RpcFailure"] * rpcs, Counter(unauthenticated_request=rpcs)
    if kind == "auth_bad_key":  # crypto: "Authentication failed." and close; SASL only: not a SaslMessage
        return ["RpcFailure"], Counter(wrong_secret=1) if mode == "crypto" else Counter(unauthenticated_request=1)
    if kind == "sasl_abandoned":
        return ["RpcResponse"], Counter()
    if kind == "sasl_wrong_secret":
        return ["RpcResponse", "RpcFailure"], Counter(wrong_secret=1)
    if kind == "sasl_ok_other_app":
        return ["RpcResponse", "RpcResponse", "RpcFailure"], Counter(ok=1, app_mismatch=1)
    if kind == "requests_before_auth":  # the one-way message has no reply, but counts
        return ["ChunkFetchFailure", "StreamFailure", "ChunkFetchFailure"], Counter(unauthenticated_request=4)
    raise AssertionError(kind)


def hs_plan(seed: int, app: str, n: int) -> list[HandshakeConn]:
    r = random.Random(seed)
    kinds, weights = zip(*HS_KINDS)
    return [HandshakeConn(k, r.getrandbits(64), app) for k in r.choices(kinds, weights, k=n)]


class HandshakeFlood:
    """HS_THREADS workers over a fixed plan of connections, paced over >= HS_MIN_S."""

    def __init__(self, host: str, port: int, plan: list[HandshakeConn]):
        self.host, self.port, self.plan = host, port, plan
        self.results: list[HsResult] = []
        self.lock = threading.Lock()
        self.next = 0
        self.done = threading.Event()
        self.t0 = self.t1 = 0.0

    def _worker(self):
        while True:
            with self.lock:
                i = self.next
                if i >= len(self.plan):
                    return
                self.next += 1
            delay = self.t0 + HS_MIN_S * i / len(self.plan) - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing, not waiting for a condition
            res = self.plan[i].run(self.host, self.port)
            with self.lock:
                self.results.append(res)

    def start(self) -> "HandshakeFlood":
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(HS_THREADS)]
        for t in threads:
            t.start()

        def finish():
            for t in threads:
                t.join()
            self.t1 = time.monotonic()
            self.done.set()

        threading.Thread(target=finish, daemon=True).start()
        return self


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture(scope="module", params=["crypto", "sasl"])  # the handshakes differ; the session cipher does not
def hostile_auth_server(request, server_kind, server_base, spark_paths, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"hostile-auth-{server_kind}-{request.param}")
    h = start_auth_server(server_kind, request.param, work, str(server_base / "root"), spark_paths.pyspark)
    yield h
    h.stop()


def test_authenticated_client_keeps_fetching_through_10k_hostile_handshakes(
        java_driver, hostile_auth_server, make_exec_dirs, server_kind, retry_log4j2):
    """While Spark's real client, with the right secret, fetches and checks blocks round after round, 10,000
    hostile connections try to handshake (HS_KINDS) and 50 more open and stall for the whole flood. Checked:
    every real fetch is byte-exact with no client retry; every hostile connection got exactly the replies its
    kind calls for (the SASL ones are computed here, RFC 2831, and the right-secret ones check the server's
    rspauth); the server is alive and serves a fresh authenticated client afterwards; its open fds come back
    to what they were before. Against the agent also: handshakes_total moved by exactly what the plan implies
    for every outcome but ok, which the real client's own connections raise too (lower-bounded)."""
    srv = hostile_auth_server
    mode, is_agent = srv.auth_mode, server_kind == "agent"
    assert srv.alive(), srv.log_tail()
    app = f"app-20261203000000-{mode == 'crypto':04d}"
    ex = make_exec_dirs("exec0")
    mos = [ex.write_map_output(0, m, SIZES, checksum_algorithms=()) for m in range(MAPS)]
    expected = {f"shuffle_0_{m}_{r}": mos[m].block(r) for m in range(MAPS) for r in range(len(SIZES))}
    ids_of = {m: [f"shuffle_0_{m}_{r}" for r in range(len(SIZES))] for m in range(MAPS)}
    fetches = [["fetch", "--exec", "0", "--ids", ",".join(ids_of[m])] for m in range(MAPS)]
    load = ["load", "--exec", "0", "--ids", ",".join(ids_of[1]), "--concurrency", "4", "--count", "100"]
    register = ["register", "--exec", "0", *itertools.chain.from_iterable(("--dir", d) for d in ex.local_dirs),
                "--subdirs", str(ex.subdirs)]
    steps = [register, *fetches, load, *fetches]
    load_step = 1 + MAPS

    def one_round():
        t0 = time.monotonic()
        res = java_driver.run(steps, port=srv.port, app=app, secret=SECRET, conf=client_conf(srv), timeout_s=60,
                              jvm_opts=[f"-Dlog4j2.configurationFile={retry_log4j2}"])
        assert res.one(0)["ok"], res.debug()
        n = 0
        for i in [i for i in range(1, len(steps)) if i != load_step]:
            s = res.summary(i)
            assert s["ok_count"] == len(SIZES) and not s["timeout"], f"step {i}: {s}\n{res.debug()}"
            for bid, rec in res.blocks(i).items():
                data = expected[bid]
                assert rec["ok"], f"{bid}: {rec}"
                assert (rec["len"], rec["crc32"], rec["sha256"]) == (len(data), crc32(data), sha256(data)), rec
                n += 1
        ld = res.one(load_step)
        assert ld["failures"] == 0 and ld["len_mismatches"] == 0 and ld["drained"], ld
        assert ld["calls_completed"] == ld["calls_issued"] == 100 and ld["bytes"] == 100 * sum(SIZES), ld
        retries = [ln for ln in res.stderr.splitlines() if RETRY_LINE.search(ln)]
        assert not retries, "the real client had to retry next to the hostile handshakes:\n" + "\n".join(retries)
        return t0, time.monotonic(), n + ld["blocks"]

    url = agent_metrics_url(srv) if is_agent else None

    def settled_fds():
        """The server's fd count once no connection of ours is open (agent: active_connections == 0)."""
        if is_agent:
            wait_until(lambda: scrape_metrics(url).get("spark_shuffle_agent_active_connections", 1) == 0, 30, 0.1,
                       "active_connections to reach 0")
        return open_fds(srv.proc.pid)

    one_round()  # warm: the index and data files the rounds read are open or cached from here on
    fds0 = settled_fds()
    before = scrape_metrics(url) if is_agent else {}

    stalls = []
    for i in range(STALLS):
        s = socket.create_connection((srv.host, srv.port), timeout=5)
        if i % 2:  # the first bytes of an RpcRequest carrying an AuthMessage, then nothing
            s.sendall(rpc(1, auth_message(app, bytes(16), bytes(60)))[:13])
        stalls.append(s)
    if is_agent:
        wait_until(lambda: scrape_metrics(url).get("spark_shuffle_agent_active_connections", 0) >= STALLS, 20, 0.05,
                   "the agent to hold every stalled connection")

    plan = hs_plan(SEED, app, HANDSHAKES)
    flood = HandshakeFlood(srv.host, srv.port, plan)
    rounds, errors = [], []

    def client_loop():
        try:
            while len(rounds) < 8:
                over = flood.done.is_set()
                rounds.append(one_round())
                if over:
                    return
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread below
            errors.append(e)

    client = threading.Thread(target=client_loop, daemon=True)
    client.start()
    flood.start()
    wait_until(flood.done.is_set, 300, 0.2, "the hostile handshakes to finish")
    client.join(timeout=300)
    assert not client.is_alive(), "the real client's rounds did not finish"
    assert not errors, f"the authenticated client failed during the flood: {errors[0]!r}"
    stalled_open = 0
    for s in stalls:
        s.setblocking(False)
        try:
            stalled_open += s.recv(1) != b""
        except BlockingIOError:
            stalled_open += 1
        except OSError:
            pass
        s.close()

    # -- the hostile side ------------------------------------------------------------------------------------------
    res = flood.results
    assert len(res) == HANDSHAKES
    secs = flood.t1 - flood.t0
    kinds = Counter(x.kind for x in res)
    took = sorted(x.seconds for x in res)
    print(f"\n[hostile handshakes, {server_kind}/{mode}] seed {SEED}: {HANDSHAKES} connections in {secs:.1f}s "
          f"({HANDSHAKES / secs:.0f} connections/s, {sum(len(x.replies) for x in res) / secs:.0f} replies/s, "
          f"{HS_THREADS} threads, paced over >= {HS_MIN_S:.0f}s); kinds {dict(sorted(kinds.items()))}; "
          f"ends {dict(Counter(x.end.split(':')[0] for x in res))}; {stalled_open}/{STALLS} stalled connections "
          f"still open at the end; one connection (connect to close, as seen here) took median "
          f"{took[len(took) // 2] * 1e3:.1f} ms, p99 {took[len(took) * 99 // 100] * 1e3:.1f} ms, max {took[-1] * 1e3:.0f} ms")
    assert not [x for x in res if x.end.startswith("connect-failed")], "the server stopped accepting"
    hung = [x for x in res if x.end == "timeout"]
    assert not hung, f"{len(hung)} hostile connections were neither answered nor closed: {hung[0]}"
    want_outcomes = Counter()
    for x in res:
        want, outcomes = expect(x.kind, mode, x.rpcs)
        want_outcomes += outcomes
        assert not x.problems, f"{x.kind}: {x.problems}"
        if x.end == "rst-sent":
            assert x.replies == want, (x.kind, x.replies, want)
        elif is_agent or x.kind != "requests_before_auth":
            assert x.replies == want and x.end == "eof", (x.kind, x.replies, want, x.end)
        else:  # the JVM answers chunk requests on another thread pool: in any order
            assert Counter(x.replies) == Counter(want) and x.end == "eof", (x.kind, x.replies, want, x.end)

    # -- the real client, and a fresh one afterwards ---------------------------------------------------------------
    overlapping = [r for r in rounds if r[0] < flood.t1 and r[1] > flood.t0]
    print(f"[real client] {len(rounds)} rounds ({len(overlapping)} overlapping the flood), "
          f"{sum(r[2] for r in rounds)} blocks, all byte-exact; round seconds {[round(b - a, 1) for a, b, _ in rounds]}")
    assert overlapping, "the real client's rounds did not overlap the flood"
    assert srv.alive(), srv.log_tail()
    one_round()
    fds1 = wait_until(lambda: (n := settled_fds()) <= fds0 + 2 and n, 30, 0.2,
                      f"the server's open fds to come back to {fds0} (+2)")
    print(f"[fds] server pid {srv.proc.pid}: {fds0} before the flood, {fds1} after it and a fresh client")

    if not is_agent:
        return
    after = scrape_metrics(url)
    got = {o: after.get(f'spark_shuffle_agent_handshakes_total{{outcome="{o}"}}', 0)
           - before.get(f'spark_shuffle_agent_handshakes_total{{outcome="{o}"}}', 0)
           for o in ("ok", "wrong_secret", "unknown_app", "unauthenticated_request", "app_mismatch")}
    bad = after.get('spark_shuffle_agent_errors_total{kind="bad_frame"}', 0) - before.get(
        'spark_shuffle_agent_errors_total{kind="bad_frame"}', 0)
    must_bad = kinds["random_bytes"] + kinds["huge_length"]
    print(f"[agent metrics] handshakes_total deltas {got}; expected from the plan {dict(want_outcomes)} "
          f"(+ the real client's {len(rounds) + 1} rounds for ok); bad_frame +{bad:.0f} (at least {must_bad})")
    for o in ("wrong_secret", "unknown_app", "unauthenticated_request", "app_mismatch"):
        assert got[o] == want_outcomes[o], (o, got, dict(want_outcomes))
    # Each real-client round authenticates at least one connection; how many it opens is the client's business.
    assert got["ok"] >= want_outcomes["ok"] + len(rounds) + 1, (got, dict(want_outcomes))
    assert must_bad <= bad <= must_bad + kinds["partial_handshake"] + kinds["sasl_abandoned"], bad
