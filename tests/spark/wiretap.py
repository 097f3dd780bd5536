"""A transparent TCP relay that decodes Spark transport frames, so job tests can see what Spark really sent.

Real executors and the driver dial `spark.shuffle.service.port`; in the job tests that port is this relay,
which forwards every byte unchanged to the server under test and, on a copy, decodes the frames
(spec section 1) and the BlockTransferMessages inside RPCs (spec section 2). It records:
  * client -> server: RegisterExecutor, OpenBlocks, FetchShuffleBlocks (with batchFetchEnabled),
    GetLocalDirsForExecutors, RemoveBlocks, DiagnoseCorruption, ChunkFetchRequest, StreamRequest ...
  * server -> client: counts of successes, and every RpcFailure / ChunkFetchFailure / StreamFailure text.
Decoding never affects forwarding: a decode error is recorded and decoding stops for that direction.
With tls=True (the app runs spark.ssl.rpc) the bytes are TLS records, so the relay decodes nothing (rpcs() and
failures() stay empty); it keeps only the first bytes each side sent on each connection (first_bytes()), which
show whether a connection began with a TLS record.
The relay listens on 127.0.0.1 only, so a client that reaches it dialled 127.0.0.1.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

MAX_BUFFERED_FRAME = 64 << 20  # decoder gives up (forwarding continues) on larger in-frame bodies

TRANSPORT = {0: "ChunkFetchRequest", 1: "ChunkFetchSuccess", 2: "ChunkFetchFailure", 3: "RpcRequest",
             4: "RpcResponse", 5: "RpcFailure", 6: "StreamRequest", 7: "StreamResponse", 8: "StreamFailure",
             9: "OneWayMessage", 10: "UploadStream", 11: "MergedBlockMetaRequest", 12: "MergedBlockMetaSuccess"}
BTM = {0: "OpenBlocks", 1: "UploadBlock", 2: "RegisterExecutor", 3: "StreamHandle", 6: "UploadBlockStream",
       7: "RemoveBlocks", 8: "BlocksRemoved", 9: "FetchShuffleBlocks", 10: "GetLocalDirsForExecutors",
       11: "LocalDirsForExecutors", 12: "PushBlockStream", 13: "FinalizeShuffleMerge", 14: "MergeStatuses",
       15: "FetchShuffleBlockChunks", 16: "DiagnoseCorruption", 17: "CorruptionCause",
       18: "BlockPushReturnCode", 19: "RemoveShuffleMerge",
       # Not BlockTransferMessages, but what the RPCs of a connection's handshake carry (spec section 6).
       0xEA: "SaslMessage", 0xFB: "AuthMessage"}


class _Reader:
    def __init__(self, b: bytes):
        self.b, self.p = b, 0

    def take(self, n: int) -> bytes:
        if self.p + n > len(self.b):
            raise ValueError("truncated")
        v = self.b[self.p:self.p + n]
        self.p += n
        return v

    def u8(self):
        return self.take(1)[0]

    def i32(self):
        return struct.unpack(">i", self.take(4))[0]

    def i64(self):
        return struct.unpack(">q", self.take(8))[0]

    def s(self):
        n = self.i32()
        if n < 0:
            raise ValueError("negative string length")
        return self.take(n).decode("utf-8")

    def sarr(self):
        return [self.s() for _ in range(self.i32())]

    def iarr(self):
        return [self.i32() for _ in range(self.i32())]

    def larr(self):
        return [self.i64() for _ in range(self.i32())]


def decode_btm(body: bytes) -> dict:
    r = _Reader(body)
    t = r.u8()
    d: dict = {"msg": BTM.get(t, f"type{t}")}
    if t == 0:
        d.update(app=r.s(), exec=r.s(), block_ids=r.sarr())
    elif t == 2:
        d.update(app=r.s(), exec=r.s(), local_dirs=r.sarr(), subdirs=r.i32(), manager=r.s())
    elif t == 3:
        d.update(stream_id=r.i64(), num_chunks=r.i32())
    elif t == 7:
        d.update(app=r.s(), exec=r.s(), block_ids=r.sarr())
    elif t == 8:
        d.update(removed=r.i32())
    elif t == 9:
        d.update(app=r.s(), exec=r.s(), shuffle=r.i32(), map_ids=r.larr())
        d["reduce_ids"] = [r.iarr() for _ in range(r.i32())]
        d["batch"] = r.u8() != 0
    elif t == 10:
        d.update(app=r.s(), exec_ids=r.sarr())
    elif t == 11:
        execs, counts, dirs = r.sarr(), r.iarr(), r.sarr()
        out, i = {}, 0
        for e, n in zip(execs, counts):
            out[e] = dirs[i:i + n]
            i += n
        d.update(dirs=out)
    elif t == 16:
        d.update(app=r.s(), exec=r.s(), shuffle=r.i32(), map_id=r.i64(), reduce=r.i32(), checksum=r.i64(),
                 algorithm=r.s())
    elif t == 17:
        d.update(cause=r.u8())
    elif t == 0xEA:
        d.update(app=r.s(), token_len=r.i32())
    elif t == 0xFB:
        d.update(app=r.s(), salt_len=len(r.take(r.i32())), ciphertext_len=len(r.take(r.i32())))
    return d


class _FrameDecoder:
    """Incremental decoder of one direction of one connection."""

    def __init__(self, tap: "WireTap", conn: int, direction: str):
        self.tap, self.conn, self.dir = tap, conn, direction
        self.buf = bytearray()
        self.raw_left = 0  # StreamResponse / UploadStream bytes that follow a frame
        self.broken = False

    def feed(self, data: bytes):
        if self.broken:
            return
        try:
            self._feed(data)
        except Exception as e:  # never let decoding disturb the relay
            self.broken = True
            self.tap._record(self.conn, self.dir, {"decode_error": repr(e)})

    def _feed(self, data: bytes):
        mv = memoryview(data)
        if self.raw_left:
            n = min(self.raw_left, len(mv))
            self.raw_left -= n
            mv = mv[n:]
        self.buf += mv
        while not self.raw_left and len(self.buf) >= 8:
            flen = struct.unpack(">q", self.buf[:8])[0]
            if flen < 9 or flen > MAX_BUFFERED_FRAME:
                raise ValueError(f"frame length {flen}")
            if len(self.buf) < flen:
                return
            frame = bytes(self.buf[8:flen])
            del self.buf[:flen]
            self._frame(frame)
            if self.raw_left and self.buf:
                n = min(self.raw_left, len(self.buf))
                self.raw_left -= n
                del self.buf[:n]

    def _frame(self, f: bytes):
        r = _Reader(f)
        t = r.u8()
        ev: dict = {"type": TRANSPORT.get(t, f"type{t}")}
        if t == 0:
            ev.update(stream_id=r.i64(), chunk=r.i32())
        elif t == 1:
            ev.update(stream_id=r.i64(), chunk=r.i32(), body_len=len(f) - 13)
        elif t == 2:
            ev.update(stream_id=r.i64(), chunk=r.i32(), error=r.s())
        elif t in (3, 4):
            ev.update(request_id=r.i64())
            r.i32()
            body = f[r.p:]
            ev["body_len"] = len(body)
            if body:
                ev["rpc"] = decode_btm(body)
        elif t == 5:
            ev.update(request_id=r.i64(), error=r.s())
        elif t == 6:
            ev.update(stream=r.s())
        elif t == 7:
            ev.update(stream=r.s(), byte_count=r.i64())
            self.raw_left = ev["byte_count"]
        elif t == 8:
            ev.update(stream=r.s(), error=r.s())
        elif t == 9:
            r.i32()
            body = f[r.p:]
            if body:
                ev["rpc"] = decode_btm(body)
        elif t == 10:
            ev.update(request_id=r.i64())
            meta = r.take(r.i32())
            ev["rpc"] = decode_btm(meta)
            self.raw_left = r.i64()
        self.tap._record(self.conn, self.dir, ev)


@dataclass
class TapEvent:
    t: float
    conn: int
    dir: str  # "c2s" | "s2c"
    ev: dict = field(default_factory=dict)


class WireTap:
    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1", tls: bool = False):
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.tls = tls
        self._first: dict[tuple[int, str], bytes] = {}
        self.events: list[TapEvent] = []
        self.peers: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._nconn = 0
        self.port = -1

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> "WireTap":
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind((self.listen_host, 0))
        self._lsock.listen(64)
        self._lsock.settimeout(0.2)
        self.port = self._lsock.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, name="wiretap-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self):
        self._stop.set()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
        for t in list(self._threads):
            t.join(timeout=5)
        try:
            self._lsock.close()
        except OSError:
            pass

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                c, peer = self._lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                s = socket.create_connection(self.target, timeout=10)
            except OSError as e:
                self._record(-1, "c2s", {"connect_error": repr(e)})
                c.close()
                continue
            s.settimeout(None)
            c.settimeout(None)
            with self._lock:
                self._nconn += 1
                cid = self._nconn
                self._socks += [c, s]
                self.peers.append(peer)
            for src, dst, d in ((c, s, "c2s"), (s, c, "s2c")):
                dec = _FrameDecoder(self, cid, d)
                t = threading.Thread(target=self._pump, args=(src, dst, dec), name=f"wiretap-{cid}-{d}",
                                     daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, dec: _FrameDecoder):
        key = (dec.conn, dec.dir)
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
                if key not in self._first:
                    with self._lock:
                        self._first[key] = bytes(data[:5])  # a TLS record header is 5 bytes
                if not self.tls:  # TLS records are not frames: decoding them would only record an error
                    dec.feed(data)
        except OSError:
            pass
        finally:
            self._record(dec.conn, dec.dir, {"type": "EOF"})
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _record(self, conn: int, direction: str, ev: dict):
        with self._lock:
            self.events.append(TapEvent(time.monotonic(), conn, direction, ev))

    # -- queries -----------------------------------------------------------------------------------------------
    def snapshot(self) -> list[TapEvent]:
        with self._lock:
            return list(self.events)

    def mark(self) -> int:
        """A position in the event log; pass it as `since` to look only at later traffic."""
        with self._lock:
            return len(self.events)

    def rpcs(self, msg: str | None = None, since: int = 0, direction: str = "c2s") -> list[dict]:
        """Decoded BlockTransferMessages (client->server requests by default; "s2c" for replies)."""
        out = []
        for e in self.snapshot()[since:]:
            if e.dir == direction and "rpc" in e.ev:
                if msg is None or e.ev["rpc"]["msg"] == msg:
                    out.append(dict(e.ev["rpc"], conn=e.conn))
        return out

    def frames(self, type_name: str, since: int = 0, direction: str = "s2c") -> list[dict]:
        return [dict(e.ev, conn=e.conn) for e in self.snapshot()[since:]
                if e.dir == direction and e.ev.get("type") == type_name]

    def failures(self, since: int = 0) -> list[dict]:
        return [dict(e.ev, conn=e.conn) for e in self.snapshot()[since:]
                if e.dir == "s2c" and e.ev.get("type") in ("RpcFailure", "ChunkFetchFailure", "StreamFailure")]

    def first_bytes(self, direction: str = "c2s") -> dict[int, bytes]:
        """Connection -> the first (up to 5) bytes this side sent on it (absent if it sent nothing)."""
        with self._lock:
            return {c: b for (c, d), b in self._first.items() if d == direction}

    def connections(self) -> int:
        with self._lock:
            return self._nconn

    def decode_errors(self) -> list[dict]:
        return [dict(e.ev, conn=e.conn, dir=e.dir) for e in self.snapshot() if "decode_error" in e.ev]

    def counts(self) -> Counter:
        c = Counter()
        for e in self.snapshot():
            if "type" in e.ev and e.ev["type"] != "EOF":
                c[f"{e.dir}:{e.ev['type']}"] += 1
            if "rpc" in e.ev:
                c[f"{e.dir}:rpc:{e.ev['rpc']['msg']}"] += 1
        return c

    def summary(self) -> str:
        c = self.counts()
        return ", ".join(f"{k}={v}" for k, v in sorted(c.items()))
