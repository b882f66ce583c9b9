#!/usr/bin/env python3
"""The upstream of the L7 soak (tests/bench/soak.sh): a small HTTP/1.1 server that runs
as a pod of the local cluster, behind the service the soak makes L7.

It answers what the soak's clients need to check that the in-pod proxy forwarded them
whole, and nothing else:
- any request: 200, `content-length`, a body of `?size=N` bytes (default 2), after
  `?delay_ms=M`; headers `x-body-received` (the request body's length as it arrived)
  and `x-saw-upgrade` (the request's Upgrade header, or `none`: an h2c upgrade must
  arrive without it);
- `Upgrade: websocket` with a `Sec-WebSocket-Key`: 101 with the RFC 6455 accept key,
  then the connection echoes every byte back (the proxy only sees a byte tunnel, so
  framing is the client's business) until the peer closes, or closes it itself when a
  read brings exactly `BYE` (so the tunnel is also ended from the upstream's side);
- a keep-alive connection idle for `--idle-timeout` seconds (default 30) is closed, as
  real servers do (gunicorn 2 s, nginx 75 s): the proxy's pool must notice, so the L7
  process's descriptors go back to where they started once the soak stops.

Only the Python 3 standard library; `--port` is the pod's containerPort.
"""
import argparse
import asyncio
import base64
import hashlib
import signal
import sys
import urllib.parse

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 64 * 1024


class BadRequest(Exception):
    pass


async def read_head(reader, idle):
    """The request head (request line + headers), or None on a clean EOF or idle close."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), idle)
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest("head too large")
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest("request line")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest("header line")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], parts[2], headers


async def read_body(reader, headers):
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    n = int(headers.get("content-length", "0") or 0)
    return await reader.readexactly(n) if n else b""


async def tunnel_echo(reader, writer):
    while True:
        data = await reader.read(65536)
        if not data or data == b"BYE":
            return
        writer.write(data)
        await writer.drain()


async def serve_conn(reader, writer, args, stats):
    stats["connections"] += 1
    try:
        while True:
            req = await read_head(reader, args.idle_timeout)
            if req is None:
                return
            method, target, version, headers = req
            body = await read_body(reader, headers)
            stats["requests"] += 1
            url = urllib.parse.urlsplit(target)
            query = urllib.parse.parse_qs(url.query)
            upgrade = headers.get("upgrade", "")
            if upgrade.lower() == "websocket" and "sec-websocket-key" in headers:
                key = headers["sec-websocket-key"].encode()
                accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
                writer.write(("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                              "connection: upgrade\r\nsec-websocket-accept: " + accept +
                              "\r\n\r\n").encode())
                await writer.drain()
                stats["tunnels"] += 1
                await tunnel_echo(reader, writer)
                return
            delay_ms = int(query.get("delay_ms", ["0"])[0])
            if delay_ms > 0:
                await asyncio.sleep(min(delay_ms, 10000) / 1000)
            size = min(int(query.get("size", ["2"])[0]), 1 << 20)
            close = "close" in headers.get("connection", "").lower() or version == "HTTP/1.0"
            writer.write((f"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                          f"content-length: {size}\r\nx-body-received: {len(body)}\r\n"
                          f"x-saw-upgrade: {upgrade or 'none'}\r\n"
                          f"connection: {'close' if close else 'keep-alive'}\r\n\r\n").encode())
            if size:
                writer.write(b"x" * size)
            await writer.drain()
            if close:
                return
    except BadRequest as e:
        stats["bad"] += 1
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        print(f"soak-upstream: 400 {e}", file=sys.stderr, flush=True)
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        stats["cut"] += 1  # the proxy gave up on a request (a client reset, a timeout)
    finally:
        writer.close()


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--idle-timeout", type=float, default=30.0)
    args = p.parse_args()
    stats = {"connections": 0, "requests": 0, "tunnels": 0, "bad": 0, "cut": 0}
    server = await asyncio.start_server(lambda r, w: serve_conn(r, w, args, stats),
                                        "0.0.0.0", args.port, limit=MAX_HEAD, backlog=1024)
    print(f"soak-upstream: listening on http 0.0.0.0:{args.port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(s, stop.set)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 60)
        except asyncio.TimeoutError:
            print(f"soak-upstream: {stats}", file=sys.stderr, flush=True)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
