#!/usr/bin/env python3
"""The clients of the L7 soak (tests/bench/soak.sh): well-behaved, upgrading, slow and
abusive HTTP/1.1 clients at a steady rate against one L7 service, for a set time.

Run inside a client pod (`sluicectl local exec deploy/sleep -- …`), so the kernel's
connect hook sends every connection to the pod's in-pod proxy; the service's upstream
is tests/bench/soak_upstream.py. Only the Python 3 standard library: asyncio over raw
non-blocking sockets, so a client can do what a library would not (dribble bytes, send
garbage, half-close, reset with SO_LINGER 0).

Classes (rates are per second of the run; `--scale` multiplies them):
  well-behaved — every failure is recorded with its time and reason, and fails the soak
    keepalive        N connections, requests one after another (GET of 0 B to 64 KiB,
                     POST of up to 32 KiB); each answer must be 2xx and complete (its
                     body as long as asked, the upstream saw the whole request body);
                     a connection is replaced after 50-400 requests
    websocket        Upgrade: websocket -> 101 with the right accept key, three
                     frames echoed, then the tunnel ends: client FIN, upstream close,
                     or client reset, in turn
    h2c              Upgrade: h2c -> 200 served as plain HTTP/1.1 (the upstream saw no
                     Upgrade header), then a second request on the connection -> 200
    upgrade-refused  Upgrade: spdy/3.1 (not configured) -> 403
    slow-body-ok     a 40-byte body dribbled over 4 s (within the timeouts) -> 200
  abusive, with a documented answer — another answer fails the soak
    slow-headers     a head dribbled a byte every 0.5 s, never finished -> 408
                     (request_headers_timeout, 10 s)
    slow-body-timeout  a 1000-byte body at a byte every 2 s -> 408 (request_timeout,
                     60 s)
    garbage          TLS bytes, junk lines, Content-Length with Transfer-Encoding, a
                     space before a colon, bare LF -> 400
  abusive, anything goes (outcomes counted)
    reset            SO_LINGER 0 close mid-head, mid-body, while the upstream answers,
                     in the middle of a 1 MiB response
    partial-body     300 of 1000 body bytes, then FIN
    idle             connections held open 20-80 s, half after one request
    burst            100 connects at once, a quarter sending a request, all closed at
                     once (half with a reset)

At the end of the run nothing new starts; well-behaved clients finish their request;
slow clients stop sending but keep their connection open, so the proxy's own timeouts
must answer them (--linger, default 75 s, is longer than request_timeout); idle ones
close. Progress goes to stdout every 30 s; the report (JSON) to --report.
Exit status 0 only if no well-behaved client failed and no documented answer was wrong.
"""
import argparse
import asyncio
import base64
import hashlib
import json
import os
import random
import resource
import socket
import struct
import sys
import time

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
REQ_TIMEOUT = 10.0  # a well-behaved request unanswered this long has failed

# name -> (kind, what is expected)
CLASSES = {
    "keepalive": ("well-behaved", "2xx, complete body, whole request body upstream"),
    "websocket": ("well-behaved", "101, accept key, frames echoed, tunnel ends cleanly"),
    "h2c": ("well-behaved", "200 without upgrade upstream, then 200 on the same connection"),
    "upgrade-refused": ("well-behaved", "403"),
    "slow-body-ok": ("well-behaved", "200, whole body upstream"),
    "slow-headers": ("answer", "408 (request_headers_timeout)"),
    "slow-body-timeout": ("answer", "408 (request_timeout)"),
    "garbage": ("answer", "400"),
    "reset": ("abusive", "none"),
    "partial-body": ("abusive", "none"),
    "idle": ("abusive", "none"),
    "burst": ("abusive", "none"),
}


class Failure(Exception):
    pass


class Stats:
    def __init__(self, t0):
        self.t0 = t0
        self.c = {n: {"started": 0, "outcomes": {}, "failures_total": 0, "failures": []}
                  for n in CLASSES}
        self.latencies = []  # keepalive, seconds

    def start(self, cls):
        self.c[cls]["started"] += 1

    def outcome(self, cls, what):
        o = self.c[cls]["outcomes"]
        o[what] = o.get(what, 0) + 1

    def fail(self, cls, reason):
        c = self.c[cls]
        c["failures_total"] += 1
        self.outcome(cls, "failed")
        if len(c["failures"]) < 50:
            c["failures"].append({"t": round(time.monotonic() - self.t0, 3), "reason": reason})
        print(f"[{time.monotonic() - self.t0:7.1f}s] {cls}: FAILED: {reason}", flush=True)


class Conn:
    """A non-blocking socket with a receive buffer."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.closed = False

    @classmethod
    async def open(cls, addr, timeout=5.0):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(s, addr), timeout)
        except BaseException:
            s.close()
            raise
        return cls(s)

    async def send(self, data):
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def fill(self):
        data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    async def until(self, delim, limit=256 * 1024):
        while True:
            i = self.buf.find(delim)
            if i >= 0:
                out = bytes(self.buf[:i + len(delim)])
                del self.buf[:i + len(delim)]
                return out
            if len(self.buf) > limit:
                raise Failure(f"no {delim!r} within {limit} bytes")
            await self.fill()

    async def exact(self, n):
        while len(self.buf) < n:
            await self.fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def to_eof(self, limit=4 << 20):
        try:
            while len(self.buf) <= limit:
                await self.fill()
        except EOFError:
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    async def response(self, method="GET"):
        """(status, headers, body) of the next response, 1xx other than 101 skipped."""
        while True:
            head = await self.until(b"\r\n\r\n")
            lines = head[:-4].decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
                raise Failure(f"bad status line {lines[0][:60]!r}")
            status = int(parts[1])
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            if 100 <= status < 200 and status != 101:
                continue
            if status == 101 or status in (204, 304) or method == "HEAD":
                return status, headers, b""
            if "chunked" in headers.get("transfer-encoding", "").lower():
                body = bytearray()
                while True:
                    size = int((await self.until(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        while await self.until(b"\r\n") != b"\r\n":
                            pass
                        return status, headers, bytes(body)
                    body += await self.exact(size)
                    await self.exact(2)
            if "content-length" in headers:
                return status, headers, await self.exact(int(headers["content-length"]))
            return status, headers, await self.to_eof()

    def shutdown_write(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def reset(self):
        """Close with a reset (SO_LINGER 0)."""
        if not self.closed:
            self.closed = True
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            self.sock.close()

    def close(self):
        if not self.closed:
            self.closed = True
            self.sock.close()


def describe(e):
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    if isinstance(e, EOFError):
        return "closed by the proxy"
    if isinstance(e, ConnectionResetError):
        return "reset by the proxy"
    if isinstance(e, Failure):
        return str(e)
    return f"{type(e).__name__}: {e}"


class Soak:
    def __init__(self, args, addr):
        self.args = args
        self.addr = addr
        self.host = args.host
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.duration
        self.stats = Stats(self.t0)
        self.tasks = set()
        self.seq = 0

    def running(self):
        return time.monotonic() < self.deadline

    def req(self, method, target, extra="", body=b"", length=None):
        """A request's bytes; Content-Length is the body's unless `length` says otherwise."""
        head = f"{method} {target} HTTP/1.1\r\nHost: {self.host}\r\nUser-Agent: sluice-soak\r\n"
        if length is None and (body or method == "POST"):
            length = len(body)
        if length is not None:
            head += f"Content-Length: {length}\r\n"
        return (head + extra + "\r\n").encode() + body

    # ------------------------------------------------------------------ well-behaved
    async def keepalive_worker(self, i, rate):
        cls = "keepalive"
        interval = 1.0 / rate
        next_t = time.monotonic() + random.random() * interval
        while self.running():
            try:
                conn = await Conn.open(self.addr)
            except Exception as e:
                self.stats.fail(cls, f"connect: {describe(e)}")
                await asyncio.sleep(1)
                continue
            left = random.randint(50, 400)
            try:
                while left and self.running():
                    now = time.monotonic()
                    if next_t > now:
                        await asyncio.sleep(next_t - now)
                    next_t = max(next_t + interval, time.monotonic() - 1.0)
                    left -= 1
                    last = left == 0 and random.random() < 0.5  # ends with Connection: close
                    if not await self.keepalive_request(conn, last):
                        break
                    if last:
                        break
            finally:
                conn.close()

    async def keepalive_request(self, conn, last):
        cls = "keepalive"
        self.stats.start(cls)
        extra = "Connection: close\r\n" if last else ""
        if random.random() < 0.2:
            body = os.urandom(random.choice([1, 1000, 8192, 32768]))
            size = 16
            raw = self.req("POST", f"/soak/post?size={size}", extra + "Content-Type: application/octet-stream\r\n", body)
        else:
            body = b""
            size = random.choice([0, 100, 2000, 16384, 65536])
            raw = self.req("GET", f"/soak/get?size={size}", extra)
        t = time.monotonic()
        try:
            await conn.send(raw)
            status, headers, got = await asyncio.wait_for(conn.response(), REQ_TIMEOUT)
        except Exception as e:
            self.stats.fail(cls, f"{'POST' if body else 'GET'} size={size}: {describe(e)}")
            return False
        self.stats.latencies.append(time.monotonic() - t)
        if not 200 <= status < 300:
            self.stats.fail(cls, f"status {status}")
            return False
        if len(got) != size:
            self.stats.fail(cls, f"short body: {len(got)} of {size} bytes")
            return False
        if headers.get("x-body-received") != str(len(body)):
            self.stats.fail(cls, f"upstream got {headers.get('x-body-received')} of {len(body)} body bytes")
            return False
        self.stats.outcome(cls, "ok")
        return True

    async def websocket(self, n):
        cls = "websocket"
        mode = ("client-fin", "upstream-close", "client-reset")[n % 3]
        key = base64.b64encode(os.urandom(16))
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        conn = None
        try:
            conn = await Conn.open(self.addr)
            await conn.send(self.req("GET", "/soak/ws", "Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                     f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n"))
            status, headers, _ = await asyncio.wait_for(conn.response(), REQ_TIMEOUT)
            if status != 101:
                raise Failure(f"status {status}, expected 101")
            if headers.get("sec-websocket-accept") != accept:
                raise Failure("wrong sec-websocket-accept")
            for m in range(3):
                payload = f"soak {n} frame {m}".encode()
                mask = os.urandom(4)
                frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(
                    b ^ mask[i % 4] for i, b in enumerate(payload))
                await conn.send(frame)
                echo = await asyncio.wait_for(conn.exact(len(frame)), REQ_TIMEOUT)
                if echo != frame:
                    raise Failure(f"frame {m} not echoed as sent")
            if mode == "client-reset":
                conn.reset()
            else:
                if mode == "client-fin":
                    conn.shutdown_write()
                else:
                    await conn.send(b"BYE")
                rest = await asyncio.wait_for(conn.to_eof(), REQ_TIMEOUT)
                if rest:
                    raise Failure(f"{len(rest)} unexpected bytes before the tunnel's end")
            self.stats.outcome(cls, f"ok-{mode}")
        except Exception as e:
            self.stats.fail(cls, f"{mode}: {describe(e)}")
        finally:
            if conn:
                conn.close()

    async def h2c(self, n):
        cls = "h2c"
        conn = None
        try:
            conn = await Conn.open(self.addr)
            await conn.send(self.req("GET", "/soak/h2c?size=10", "Connection: Upgrade, HTTP2-Settings\r\n"
                                     "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"))
            status, headers, body = await asyncio.wait_for(conn.response(), REQ_TIMEOUT)
            if status != 200 or len(body) != 10:
                raise Failure(f"status {status} with {len(body)} bytes, expected 200 with 10")
            if headers.get("x-saw-upgrade") != "none":
                raise Failure(f"the upstream saw Upgrade: {headers.get('x-saw-upgrade')}")
            await conn.send(self.req("GET", "/soak/after-h2c?size=5"))
            status, headers, body = await asyncio.wait_for(conn.response(), REQ_TIMEOUT)
            if status != 200 or len(body) != 5:
                raise Failure(f"second request: status {status} with {len(body)} bytes")
            self.stats.outcome(cls, "ok")
        except Exception as e:
            self.stats.fail(cls, describe(e))
        finally:
            if conn:
                conn.close()

    async def upgrade_refused(self, n):
        cls = "upgrade-refused"
        conn = None
        try:
            conn = await Conn.open(self.addr)
            await conn.send(self.req("GET", "/soak/spdy", "Connection: Upgrade\r\nUpgrade: spdy/3.1\r\n"))
            status, _, _ = await asyncio.wait_for(conn.response(), REQ_TIMEOUT)
            if status != 403:
                raise Failure(f"status {status}, expected 403")
            self.stats.outcome(cls, "ok-403")
        except Exception as e:
            self.stats.fail(cls, describe(e))
        finally:
            if conn:
                conn.close()

    async def slow_body_ok(self, n):
        cls = "slow-body-ok"
        conn = None
        body = b"0123456789" * 4
        try:
            conn = await Conn.open(self.addr)
            await conn.send(self.req("POST", "/soak/slow-body?size=3", length=len(body)))
            for i in range(len(body)):
                await asyncio.sleep(0.1)
                await conn.send(body[i:i + 1])
            status, headers, got = await asyncio.wait_for(conn.response(), REQ_TIMEOUT)
            if status != 200 or len(got) != 3:
                raise Failure(f"status {status} with {len(got)} bytes, expected 200 with 3")
            if headers.get("x-body-received") != str(len(body)):
                raise Failure(f"upstream got {headers.get('x-body-received')} of {len(body)} bytes")
            self.stats.outcome(cls, "ok")
        except Exception as e:
            self.stats.fail(cls, describe(e))
        finally:
            if conn:
                conn.close()

    # ------------------------------------------------------------------ documented answers
    async def dribble_until_answer(self, conn, data, every):
        """Sends data a byte every `every` seconds (stopping at the end of the run) while
        waiting for the proxy's answer; returns (status, seconds)."""
        t = time.monotonic()
        answer = asyncio.ensure_future(conn.response())

        async def dribble():
            try:
                for i in range(len(data)):
                    if not self.running():
                        return  # abandoned: the proxy's timeout must close it
                    await conn.send(data[i:i + 1])
                    await asyncio.sleep(every)
            except OSError:
                return  # the proxy closed it: the answer (or its absence) tells

        sender = asyncio.ensure_future(dribble())
        try:
            status, _, _ = await asyncio.wait_for(answer, 120)
        finally:
            sender.cancel()
            answer.cancel()
        return status, time.monotonic() - t

    async def slow_headers(self, n):
        cls = "slow-headers"
        conn = None
        head = self.req("GET", "/soak/slow-head", "X-Slow: " + "a" * 400 + "\r\n")[:-4]  # never ends
        try:
            conn = await Conn.open(self.addr)
            status, secs = await self.dribble_until_answer(conn, head, 0.5)
            if status != 408:
                raise Failure(f"status {status} after {secs:.1f} s, expected 408")
            self.stats.outcome(cls, "ok-408")
            self.stats.outcome(cls, f"answered in {int(secs)} s")
        except Exception as e:
            self.stats.fail(cls, describe(e))
        finally:
            if conn:
                conn.close()

    async def slow_body_timeout(self, n):
        cls = "slow-body-timeout"
        conn = None
        try:
            conn = await Conn.open(self.addr)
            await conn.send(self.req("POST", "/soak/slow-body-timeout", length=1000))
            status, secs = await self.dribble_until_answer(conn, b"b" * 1000, 2.0)
            if status != 408:
                raise Failure(f"status {status} after {secs:.1f} s, expected 408")
            self.stats.outcome(cls, "ok-408")
            self.stats.outcome(cls, f"answered in {int(secs) // 5 * 5}-{int(secs) // 5 * 5 + 5} s")
        except Exception as e:
            self.stats.fail(cls, describe(e))
        finally:
            if conn:
                conn.close()

    def garbage_bytes(self, n):
        junk = bytes(b for b in os.urandom(300) if b not in (10, 13))
        variants = [
            ("tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + junk + b"\r\n\r\n"),
            ("junk-line", "".join(random.choice("abcdefgh /:?%") for _ in range(80)).encode()
             + b"\r\n\r\n"),
            ("cl-and-te", self.req("POST", "/soak/smuggle", "Transfer-Encoding: chunked\r\n",
                                   b"0\r\n\r\nGET /soak/smuggled HTTP/1.1\r\nHost: x\r\n\r\n")),
            ("space-before-colon", self.req("GET", "/soak/bad", "X-Bad : yes\r\n")),
            ("bare-lf", f"GET /soak/lf HTTP/1.1\nHost: {self.host}\n\n".encode()),
        ]
        return variants[n % len(variants)]

    async def garbage(self, n):
        cls = "garbage"
        conn = None
        name, data = self.garbage_bytes(n)
        try:
            conn = await Conn.open(self.addr)
            await conn.send(data)
            status, _, _ = await asyncio.wait_for(conn.response(), REQ_TIMEOUT)
            if status != 400:
                raise Failure(f"{name}: status {status}, expected 400")
            self.stats.outcome(cls, f"ok-400 {name}")
        except Failure as e:
            self.stats.fail(cls, str(e))
        except Exception as e:
            self.stats.fail(cls, f"{name}: {describe(e)}")
        finally:
            if conn:
                conn.close()

    # ------------------------------------------------------------------ anything goes
    async def reset(self, n):
        cls = "reset"
        mode = ("mid-head", "mid-body", "awaiting-answer", "mid-response")[n % 4]
        conn = None
        try:
            conn = await Conn.open(self.addr)
            if mode == "mid-head":
                await conn.send(self.req("GET", "/soak/reset")[:30])
                await asyncio.sleep(0.05)
            elif mode == "mid-body":
                await conn.send(self.req("POST", "/soak/reset", "", b"c" * 5000)[:-4000])
                await asyncio.sleep(0.05)
            elif mode == "awaiting-answer":
                await conn.send(self.req("GET", "/soak/reset?delay_ms=300&size=100"))
                await asyncio.sleep(0.05)
            else:
                await conn.send(self.req("GET", "/soak/reset?size=1048576"))
                await asyncio.wait_for(conn.fill(), REQ_TIMEOUT)
            conn.reset()
            self.stats.outcome(cls, f"reset {mode}")
        except Exception as e:
            self.stats.outcome(cls, f"{mode}: {describe(e)}")
        finally:
            if conn:
                conn.close()

    async def partial_body(self, n):
        cls = "partial-body"
        conn = None
        try:
            conn = await Conn.open(self.addr)
            await conn.send(self.req("POST", "/soak/partial", length=1000) + b"p" * 300)
            conn.shutdown_write()
            t = time.monotonic()
            try:
                status, _, _ = await asyncio.wait_for(conn.response(), 90)
                self.stats.outcome(cls, f"answered {status}")
            except (EOFError, ConnectionResetError) as e:
                self.stats.outcome(cls, f"{describe(e)} after {int(time.monotonic() - t)} s")
        except Exception as e:
            self.stats.outcome(cls, describe(e))
        finally:
            if conn:
                conn.close()

    async def idle(self, n):
        cls = "idle"
        conn = None
        hold = random.uniform(20, 80)
        after_request = n % 2 == 0
        try:
            conn = await Conn.open(self.addr)
            if after_request:
                await conn.send(self.req("GET", "/soak/idle?size=10"))
                status, _, _ = await asyncio.wait_for(conn.response(), REQ_TIMEOUT)
                if status != 200:
                    self.stats.outcome(cls, f"first request {status}")
            t = time.monotonic()
            end = min(t + hold, self.deadline)
            try:
                await asyncio.wait_for(conn.fill(), max(0.0, end - t))
                self.stats.outcome(cls, "unexpected bytes")
            except asyncio.TimeoutError:
                self.stats.outcome(cls, "held open until the client closed")
            except (EOFError, ConnectionResetError) as e:
                self.stats.outcome(cls, f"{describe(e)} after {int(time.monotonic() - t)} s"
                                   f"{' (after a request)' if after_request else ''}")
            (conn.reset if n % 4 < 2 else conn.close)()
        except Exception as e:
            self.stats.outcome(cls, describe(e))
        finally:
            if conn:
                conn.close()

    async def burst(self, n, size=100):
        cls = "burst"
        results = await asyncio.gather(*(Conn.open(self.addr) for _ in range(size)),
                                       return_exceptions=True)
        conns = [c for c in results if isinstance(c, Conn)]
        failed = len(results) - len(conns)
        for i, c in enumerate(conns):
            if i % 4 == 0:
                try:
                    await c.send(self.req("GET", "/soak/burst?size=2000"))
                except OSError:
                    pass
        await asyncio.sleep(0.01)
        for i, c in enumerate(conns):
            (c.reset if i % 2 else c.close)()
        self.stats.outcome(cls, "all connected" if not failed else f"{failed} connects failed")

    # ------------------------------------------------------------------ the schedule
    async def every(self, cls, period, fn, cap):
        """Starts fn(n) every `period` seconds until the end of the run (at most `cap` in
        flight: past it a start is skipped and counted, so a stall is seen, not queued)."""
        n = 0
        inflight = set()
        next_t = time.monotonic() + random.random() * period
        while True:
            now = time.monotonic()
            if next_t >= self.deadline:
                break
            if next_t > now:
                await asyncio.sleep(next_t - now)
            next_t += period
            inflight = {t for t in inflight if not t.done()}
            if len(inflight) >= cap:
                self.stats.outcome(cls, "skipped (too many in flight)")
                continue
            self.stats.start(cls)
            t = asyncio.ensure_future(fn(n))
            inflight.add(t)
            self.tasks.add(t)
            n += 1

    async def progress(self):
        while self.running():
            await asyncio.sleep(min(30, max(0.1, self.deadline - time.monotonic())))
            parts = []
            for name, c in self.stats.c.items():
                ok = sum(v for k, v in c["outcomes"].items() if k != "failed")
                parts.append(f"{name}={ok}" + (f"/FAILED {c['failures_total']}" if c["failures_total"] else ""))
            print(f"[{time.monotonic() - self.t0:7.1f}s] " + " ".join(parts), flush=True)

    async def run(self):
        s = self.args.scale
        only = set(self.args.only.split(",")) if self.args.only else set(CLASSES)
        workers = [asyncio.ensure_future(self.keepalive_worker(i, self.args.rate * s / self.args.connections))
                   for i in range(self.args.connections if "keepalive" in only else 0)]
        schedule = [
            ("websocket", 1.0, self.websocket, 20),
            ("h2c", 2.0, self.h2c, 20),
            ("upgrade-refused", 2.0, self.upgrade_refused, 20),
            ("slow-body-ok", 3.0, self.slow_body_ok, 20),
            ("slow-headers", 3.0, self.slow_headers, 20),
            ("slow-body-timeout", 10.0, self.slow_body_timeout, 20),
            ("garbage", 1.0, self.garbage, 20),
            ("reset", 1.0, self.reset, 20),
            ("partial-body", 2.0, self.partial_body, 60),
            ("idle", 4.0, self.idle, 40),
            ("burst", 20.0, self.burst, 2),
        ]
        spawners = [asyncio.ensure_future(self.every(cls, period / s, fn, cap))
                    for cls, period, fn, cap in schedule if cls in only]
        progress = asyncio.ensure_future(self.progress())
        await asyncio.gather(*spawners, progress)
        await asyncio.gather(*workers)
        pending = {t for t in self.tasks if not t.done()}
        if pending:
            print(f"[{time.monotonic() - self.t0:7.1f}s] run over: {len(pending)} clients still "
                  f"open (slow ones wait for the proxy's answer), lingering up to "
                  f"{self.args.linger:.0f} s", flush=True)
            done, pending = await asyncio.wait(pending, timeout=self.args.linger)
            for t in pending:
                t.cancel()
            if pending:
                print(f"{len(pending)} clients still unanswered after the linger: cut", flush=True)
                self.cut = len(pending)
        return self.report()

    def report(self):
        lat = sorted(self.stats.latencies)

        def pct(p):
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

        out = {"target": f"{self.host} ({self.addr[0]}:{self.addr[1]})",
               "duration_s": self.args.duration, "scale": self.args.scale,
               "keepalive_rate_per_s": self.args.rate * self.args.scale,
               "keepalive_connections": self.args.connections,
               "keepalive_latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
               "cut_at_end": getattr(self, "cut", 0), "classes": {}}
        wb = bad_answers = 0
        for name, c in self.stats.c.items():
            kind, expect = CLASSES[name]
            out["classes"][name] = dict(kind=kind, expect=expect, **c)
            if kind == "well-behaved":
                wb += c["failures_total"]
            elif kind == "answer":
                bad_answers += c["failures_total"]
        out["well_behaved_failures"] = wb
        out["wrong_answers"] = bad_answers
        return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", default="soak-echo:8080", help="HOST:PORT of the L7 service")
    p.add_argument("--duration", type=float, default=600)
    p.add_argument("--rate", type=float, default=40, help="keep-alive requests per second, in all")
    p.add_argument("--connections", type=int, default=8, help="keep-alive connections")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every rate")
    p.add_argument("--linger", type=float, default=75)
    p.add_argument("--only", help="CLASS,... : run only these classes (to reproduce a finding)")
    p.add_argument("--report", help="write the JSON report here")
    args = p.parse_args()
    if args.only and not set(args.only.split(",")) <= set(CLASSES):
        p.error(f"--only: classes are {', '.join(CLASSES)}")
    host, _, port = args.target.rpartition(":")
    args.host = args.target
    addr = (socket.gethostbyname(host), int(port))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"soak clients: {args.target} = {addr[0]}:{addr[1]} for {args.duration:.0f} s", flush=True)
    report = asyncio.run(Soak(args, addr).run())
    text = json.dumps(report, indent=1)
    if args.report:
        with open(args.report, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    print(f"well-behaved failures: {report['well_behaved_failures']}, wrong documented answers: "
          f"{report['wrong_answers']}", flush=True)
    return 0 if report["well_behaved_failures"] == 0 and report["wrong_answers"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
