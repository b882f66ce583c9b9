#!/usr/bin/python3
"""gRPC client and server for the end-to-end gRPC checks (tests/e2e-grpc/check.sh).

Debian's python3-grpcio, a third-party gRPC stack (not the project's gRPC++), on both
ends. No generated code: every message here is a protobuf with string field 1 (Istio's
echo EchoRequest/EchoResponse have that shape) or, for Istio's ForwardEcho, a few
scalar fields, encoded and decoded by hand below.

  grpc_probe.py serve --port P --version V
      The probe server, service probe.Probe (our own test service, not Istio's API):
        Unary(key)   -> "ServiceVersion=V", "Deadline=<seconds left>", each request header
                        as "Header=<name>:<value>"; trailer x-probe-trailer: unary-<key>
        Stream(n)    -> n replies "reply i of n" (server streaming); trailer
                        x-probe-trailer: stream-<n>
        Chat(m...)   -> "echo <m> from V" for each message as it comes (bidirectional
                        streaming); trailer x-probe-trailer: chat-<count>
        Flaky(key:f) -> UNAVAILABLE for the first f calls with this key, then "calls=<c>"
        Count(key)   -> "calls=<c>": how many Flaky calls with this key reached the server
        Fail(code)   -> that status code with message "probe failure <code>" and trailer
                        x-probe-trailer: fail-<code>

  grpc_probe.py <check> --target HOST:PORT [options]
      One check as a client; prints its evidence, then "OK: ..." (exit 0) or
      "FAIL: ..." (exit 1). Checks: echo-versions (Istio's echo app, Echo or ForwardEcho
      calls, counted by the version that answered), unary, stream, retry, deadline,
      bidi, status. See --help of each.
"""
import argparse
import collections
import os
import queue
import re
import sys
import threading
import time
from concurrent import futures

# Names resolve through the pod's /etc/hosts (the local cluster has no DNS server):
# getaddrinfo, not gRPC's c-ares resolver, which first waits for a DNS server that is not
# there (seconds, taken out of a call's deadline).
os.environ.setdefault("GRPC_DNS_RESOLVER", "native")

import grpc  # noqa: E402

# ------------------------------------------------------------------------------------
# Protobuf wire format, by hand: varints and length-delimited fields are all we need.


def _varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_fields(fields):
    """fields: [(number, value)], value str/bytes (length-delimited) or int (varint)."""
    out = bytearray()
    for number, value in fields:
        if isinstance(value, int):
            out += _varint(number << 3 | 0) + _varint(value)
        else:
            data = value.encode() if isinstance(value, str) else value
            out += _varint(number << 3 | 2) + _varint(len(data)) + data
    return bytes(out)


def decode_fields(data):
    """-> [(number, value)]: ints for varints, bytes for length-delimited fields."""
    fields, i = [], 0

    def varint():
        nonlocal i
        shift = result = 0
        while True:
            if i >= len(data):
                raise ValueError("truncated varint")
            b = data[i]
            i += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields.append((number, varint()))
        elif wire == 2:
            n = varint()
            if i + n > len(data):
                raise ValueError("truncated field %d" % number)
            fields.append((number, data[i:i + n]))
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError("wire type %d of field %d" % (wire, number))
    return fields


def encode_string(s):  # a message whose field 1 is the string s
    return encode_fields([(1, s)])


def decode_strings(data):  # every field-1 string of a message (repeated or not)
    return [v.decode(errors="replace") for n, v in decode_fields(data) if n == 1 and isinstance(v, bytes)]


def decode_string(data):
    got = decode_strings(data)
    return got[0] if got else ""


# ------------------------------------------------------------------------------------
# The probe server.


class Probe:
    def __init__(self, version):
        self.version = version
        self.lock = threading.Lock()
        self.calls = collections.Counter()

    def unary(self, key, ctx):
        left = ctx.time_remaining()
        lines = ["ServiceVersion=" + self.version,
                 "Deadline=%s" % ("none" if left is None or left > 1e6 else "%.3f" % left)]
        lines += ["Header=%s:%s" % (k, v) for k, v in ctx.invocation_metadata()]
        ctx.set_trailing_metadata((("x-probe-trailer", "unary-" + key),))
        return "\n".join(lines)

    def stream(self, n, ctx):
        count = int(n or "1")
        ctx.set_trailing_metadata((("x-probe-trailer", "stream-%d" % count),))
        for i in range(1, count + 1):
            yield "reply %d of %d from %s" % (i, count, self.version)

    def chat(self, requests, ctx):
        n = 0
        for req in requests:
            n += 1
            yield "echo %s from %s" % (decode_string(req), self.version)
        ctx.set_trailing_metadata((("x-probe-trailer", "chat-%d" % n),))

    def flaky(self, spec, ctx):
        key, _, fails = spec.partition(":")
        with self.lock:
            self.calls[key] += 1
            c = self.calls[key]
        if c <= int(fails or "0"):
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "probe: call %d of key %s fails" % (c, key))
        return "calls=%d" % c

    def count(self, key, ctx):
        with self.lock:
            return "calls=%d" % self.calls[key]

    def fail(self, code, ctx):
        status = grpc.StatusCode.INTERNAL
        for s in grpc.StatusCode:
            if s.value[0] == int(code):
                status = s
        ctx.set_trailing_metadata((("x-probe-trailer", "fail-%s" % code),))
        ctx.abort(status, "probe failure %s" % code)


def serve(args):
    probe = Probe(args.version)

    def unary(fn):
        return grpc.unary_unary_rpc_method_handler(
            lambda req, ctx: fn(decode_string(req), ctx),
            request_deserializer=None, response_serializer=encode_string)

    handlers = {
        "Unary": unary(probe.unary),
        "Flaky": unary(probe.flaky),
        "Count": unary(probe.count),
        "Fail": unary(probe.fail),
        "Stream": grpc.unary_stream_rpc_method_handler(
            lambda req, ctx: probe.stream(decode_string(req), ctx),
            request_deserializer=None, response_serializer=encode_string),
        "Chat": grpc.stream_stream_rpc_method_handler(
            probe.chat, request_deserializer=None, response_serializer=encode_string),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("probe.Probe", handlers),))
    address = "%s:%d" % (args.address, args.port)
    if server.add_insecure_port(address) == 0:
        sys.exit("grpc_probe: cannot listen on %s" % address)
    server.start()
    print("grpc_probe: probe.Probe %s serving on %s (h2c only)" % (args.version, address), flush=True)
    server.wait_for_termination()


# ------------------------------------------------------------------------------------
# Client checks.


def channel(target):
    # No proxy from the environment: the call must go where the check says.
    return grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])


def call(ch, method, request, timeout=10, metadata=None):
    """A unary call with raw bytes; -> (response bytes or None, code, details, trailers)."""
    fn = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        resp, c = fn.with_call(request, timeout=timeout, metadata=metadata)
        return resp, c.code(), c.details(), dict(c.trailing_metadata() or ())
    except grpc.RpcError as e:
        return None, e.code(), e.details(), dict(e.trailing_metadata() or ())


def done(ok, msg):
    print(("OK: " if ok else "FAIL: ") + msg, flush=True)
    return 0 if ok else 1


def check_echo_versions(args):
    """Calls Istio's echo app --count times (Echo, or ForwardEcho asking the answering
    server to Echo itself at --forward-url) and counts who answered by ServiceVersion=."""
    ch = channel(args.target)
    counts, errors, first_error = collections.Counter(), 0, ""
    for i in range(args.count):
        if args.method == "Echo":
            req = encode_string("sluicet-%d" % i)
            resp, code, details, _ = call(ch, "/proto.EchoTestService/Echo", req, args.timeout)
        else:
            # ForwardEchoRequest: count=1 (field 1), url (field 4), message (field 6).
            req = encode_fields([(1, 1), (4, args.forward_url), (6, "sluicet-fwd-%d" % i)])
            resp, code, details, _ = call(ch, "/proto.EchoTestService/ForwardEcho", req, args.timeout)
        if code != grpc.StatusCode.OK:
            errors += 1
            first_error = first_error or "%s: %s" % (code.name, details)
            continue
        text = "\n".join(decode_strings(resp))
        found = re.findall(r"ServiceVersion=(v[0-9]+)", text)
        counts[found[0] if found else "unknown"] += 1
    print("calls %d" % args.count)
    for v in sorted(counts):
        print("%s %d" % (v, counts[v]))
    print("errors %d%s" % (errors, (" (first: %s)" % first_error) if errors else ""))
    if errors:
        return done(False, "%d of %d %s calls failed, first %s" % (errors, args.count, args.method, first_error))
    return done(True, "%d %s calls answered" % (args.count, args.method))


def check_unary(args):
    ch = channel(args.target)
    resp, code, details, trailers = call(ch, "/probe.Probe/Unary", encode_string("k1"), 10,
                                         metadata=(("x-sluicet-probe", "unary-header"),))
    if code != grpc.StatusCode.OK:
        return done(False, "Unary: %s: %s" % (code.name, details))
    text = decode_string(resp)
    print(text)
    print("trailers: %s" % trailers)
    if "Header=x-sluicet-probe:unary-header" not in text:
        return done(False, "Unary answered, but the server did not see header x-sluicet-probe")
    if trailers.get("x-probe-trailer") != "unary-k1":
        return done(False, "Unary answered, but trailer x-probe-trailer is %r, not 'unary-k1'" % trailers.get("x-probe-trailer"))
    return done(True, "Unary OK, header x-sluicet-probe reached the server, trailer x-probe-trailer: unary-k1 came back")


def check_stream(args):
    ch = channel(args.target)
    fn = ch.unary_stream("/probe.Probe/Stream", request_serializer=None, response_deserializer=None)
    it = fn(encode_string(str(args.n)), timeout=10)
    got = []
    try:
        for msg in it:
            got.append(decode_string(msg))
    except grpc.RpcError as e:
        return done(False, "Stream: %s: %s after %d replies" % (e.code().name, e.details(), len(got)))
    trailers = dict(it.trailing_metadata() or ())
    print("%d replies, first %r, last %r; trailers %s" % (len(got), got[:1], got[-1:], trailers))
    want = ["reply %d of %d" % (i, args.n) for i in range(1, args.n + 1)]
    if [g.rsplit(" from ", 1)[0] for g in got] != want:
        return done(False, "Stream: %d replies, not replies 1..%d in order" % (len(got), args.n))
    if trailers.get("x-probe-trailer") != "stream-%d" % args.n:
        return done(False, "Stream: trailer x-probe-trailer is %r" % trailers.get("x-probe-trailer"))
    return done(True, "server streaming: %d replies in order, then status OK and trailer x-probe-trailer: stream-%d" % (args.n, args.n))


def check_bidi(args):
    """A bidirectional call that sends each message only once the reply to the previous
    one came back, then half-closes: it completes only if both directions stream."""
    ch = channel(args.target)
    fn = ch.stream_stream("/probe.Probe/Chat", request_serializer=None, response_deserializer=None)
    outbox = queue.Queue()

    def requests():
        while True:
            m = outbox.get()
            if m is None:
                return
            yield encode_string(m)

    outbox.put("m1")
    it = fn(requests(), timeout=args.timeout)
    got = []
    try:
        for i in range(1, args.n + 1):
            reply = decode_string(next(it))
            got.append(reply)
            if not reply.startswith("echo m%d from " % i):
                outbox.put(None)
                return done(False, "Chat: reply %d is %r, not the echo of m%d" % (i, reply, i))
            outbox.put("m%d" % (i + 1) if i < args.n else None)
        rest = list(it)
    except grpc.RpcError as e:
        outbox.put(None)
        return done(False, "Chat: %s: %s after %d replies (each message waits for the previous "
                    "reply: a proxy that buffers the request stream never answers)" %
                    (e.code().name, e.details(), len(got)))
    trailers = dict(it.trailing_metadata() or ())
    print("%d replies, first %r, last %r; trailers %s" % (len(got), got[:1], got[-1:], trailers))
    if rest:
        return done(False, "Chat: %d replies more than messages sent" % len(rest))
    if trailers.get("x-probe-trailer") != "chat-%d" % args.n:
        return done(False, "Chat: trailer x-probe-trailer is %r, not 'chat-%d'" % (trailers.get("x-probe-trailer"), args.n))
    return done(True, "bidirectional streaming: %d messages, each answered before the next was sent, "
                "then status OK and trailer x-probe-trailer: chat-%d" % (args.n, args.n))


def check_retry(args):
    ch = channel(args.target)
    key = "sluicet-%d-%d" % (time.time() * 1000, id(ch) % 1000)
    _, code, details, _ = call(ch, "/probe.Probe/Flaky", encode_string("%s:%d" % (key, args.fails)), 20)
    resp, ccode, cdetails, _ = call(ch, "/probe.Probe/Count", encode_string(key), 10)
    if ccode != grpc.StatusCode.OK:
        return done(False, "Count: %s: %s" % (ccode.name, cdetails))
    calls = int(decode_string(resp).split("=")[1])
    print("Flaky (fails %d times): client got %s%s; the server counted %d calls" %
          (args.fails, code.name, (" (%s)" % details) if details else "", calls))
    want = args.fails + 1
    if code == grpc.StatusCode.OK and calls == want:
        return done(True, "the client got OK after %d UNAVAILABLE answers: the server counted %d calls" % (args.fails, calls))
    return done(False, "client got %s, the server counted %d calls (want OK and %d)" % (code.name, calls, want))


def check_deadline(args):
    ch = channel(args.target)
    # A first call connects the channel, so the deadline below is spent on the call only.
    call(ch, "/probe.Probe/Unary", encode_string("warm-up"), 10)
    resp, code, details, _ = call(ch, "/probe.Probe/Unary", encode_string("deadline"), args.timeout)
    if code != grpc.StatusCode.OK:
        return done(False, "Unary with a %gs deadline: %s: %s" % (args.timeout, code.name, details))
    text = decode_string(resp)
    m = re.search(r"Deadline=(\S+)", text)
    left = m.group(1) if m else "?"
    print("client deadline %gs; the server's time left: %s" % (args.timeout, left))
    try:
        secs = float(left)
    except ValueError:
        return done(False, "the server saw no deadline (Deadline=%s): grpc-timeout did not reach it" % left)
    # grpc-timeout is rounded up to its unit; the server's clock starts after the client's.
    if args.timeout - 1 < secs <= args.timeout + 0.05:
        return done(True, "the server saw a deadline of %.3fs left of the client's %gs (grpc-timeout arrived)" % (secs, args.timeout))
    return done(False, "the server's deadline %.3fs does not match the client's %gs" % (secs, args.timeout))


def check_status(args):
    ch = channel(args.target)
    _, code, details, trailers = call(ch, "/probe.Probe/Fail", encode_string(str(args.code)), 10)
    print("status %s (%d), message %r, trailers %s" % (code.name, code.value[0], details, trailers))
    want = "probe failure %d" % args.code
    if "content-length" in trailers:
        # A trailers-only answer is HEADERS with END_STREAM (Envoy sends no content-length).
        return done(False, "the trailers-only answer carried content-length: %s" % trailers["content-length"])
    if code.value[0] == args.code and details == want and trailers.get("x-probe-trailer") == "fail-%d" % args.code:
        return done(True, "grpc-status %d, grpc-message %r and trailer x-probe-trailer intact" % (args.code, want))
    return done(False, "want status %d %r with trailer x-probe-trailer: fail-%d; got %s %r, trailers %s" %
                (args.code, want, args.code, code.name, details, trailers))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--address", default="0.0.0.0")
    s.add_argument("--version", default="v1")
    checks = {
        "echo-versions": check_echo_versions, "unary": check_unary, "stream": check_stream,
        "bidi": check_bidi,
        "retry": check_retry, "deadline": check_deadline, "status": check_status,
    }
    for name in checks:
        c = sub.add_parser(name)
        c.add_argument("--target", required=True, help="HOST:PORT")
        if name == "echo-versions":
            c.add_argument("--method", choices=["Echo", "ForwardEcho"], default="Echo")
            c.add_argument("--count", type=int, default=10)
            c.add_argument("--forward-url", default="grpc://127.0.0.1:17070")
            c.add_argument("--timeout", type=float, default=5)
        if name == "stream":
            c.add_argument("--n", type=int, default=50)
        if name == "bidi":
            c.add_argument("--n", type=int, default=5)
            c.add_argument("--timeout", type=float, default=10)
        if name == "retry":
            c.add_argument("--fails", type=int, default=3)
        if name == "deadline":
            c.add_argument("--timeout", type=float, default=5)
        if name == "status":
            c.add_argument("--code", type=int, default=5)
    args = p.parse_args()
    if args.cmd == "serve":
        serve(args)
        return 0
    return checks[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
