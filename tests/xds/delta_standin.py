#!/usr/bin/env python3
"""A stand-in Delta ADS server, written from Envoy's xds_protocol.rst ("Incremental xDS"),
independent of Sluice's own server: it serves one scripted sequence to one client and
checks every request the client sends against the rules (nonces, ACK/NACK, subscriptions,
initial_resource_versions on reconnect).

Usage: delta_standin.py DESCRIPTOR_SET RESULT_FILE
Prints "PORT <n>" once listening on 127.0.0.1. Writes "OK" or "FAIL: why" to RESULT_FILE
when the script ends, and exits (the client keeps what it applied).
"""
import os
import queue
import sys
import threading
from concurrent import futures

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
T = "type.googleapis.com/envoy.config."
CDS, EDS, LDS = T + "cluster.v3.Cluster", T + "endpoint.v3.ClusterLoadAssignment", \
    T + "listener.v3.Listener"
UNKNOWN = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
# An xdstp:// name: the client must treat it as an opaque string, in the cluster's name,
# its EDS service name and the listener's reference to it.
XDSTP = "xdstp://sluice.test/envoy.config.cluster.v3.Cluster/ns/b"
WAIT = 10  # seconds for each expected request


class Fail(Exception):
    pass


def load(path):
    fds = descriptor_pb2.FileDescriptorSet()
    with open(path, "rb") as f:
        fds.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    factory = message_factory.MessageFactory(pool)

    def cls(name):
        d = pool.FindMessageTypeByName(name)
        get = getattr(message_factory, "GetMessageClass", None)
        return get(d) if get else factory.GetPrototype(d)

    return cls


class Script:
    def __init__(self, cls):
        self.Req = cls("envoy.service.discovery.v3.DeltaDiscoveryRequest")
        self.Resp = cls("envoy.service.discovery.v3.DeltaDiscoveryResponse")
        self.Cluster = cls("envoy.config.cluster.v3.Cluster")
        self.Cla = cls("envoy.config.endpoint.v3.ClusterLoadAssignment")
        self.Listener = cls("envoy.config.listener.v3.Listener")
        self.TcpProxy = cls("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy")
        self.streams = queue.Queue()  # (requests queue, responses queue) per stream
        self.result = None

    # --- resources ---
    def eds_cluster(self, name, lb_policy=None):
        c = self.Cluster()
        c.name = name
        c.type = self.Cluster.DESCRIPTOR.enum_types_by_name["DiscoveryType"].values_by_name["EDS"].number
        c.eds_cluster_config.service_name = name
        c.eds_cluster_config.eds_config.ads.SetInParent()
        c.connect_timeout.seconds = 1
        if lb_policy:
            c.lb_policy = self.Cluster.DESCRIPTOR.enum_types_by_name["LbPolicy"].values_by_name[lb_policy].number
        return c

    def static_cluster(self, name):
        c = self.Cluster()
        c.name = name
        c.type = self.Cluster.DESCRIPTOR.enum_types_by_name["DiscoveryType"].values_by_name["STATIC"].number
        sa = c.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
        sa.address, sa.port_value = "127.0.0.1", 9000
        return c

    def cla(self, name, ip, port):
        c = self.Cla()
        c.cluster_name = name
        sa = c.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
        sa.address, sa.port_value = ip, port
        return c

    def tcp_listener(self, name, port, cluster):
        tp = self.TcpProxy()
        tp.stat_prefix, tp.cluster = "tcp", cluster
        l = self.Listener()
        l.name = name
        sa = l.address.socket_address
        sa.address, sa.port_value = "0.0.0.0", port
        f = l.filter_chains.add().filters.add()
        f.name = "envoy.filters.network.tcp_proxy"
        f.typed_config.Pack(tp)
        return l

    def response(self, type_url, nonce, sysver, resources=(), removed=()):
        r = self.Resp()
        r.type_url, r.nonce, r.system_version_info = type_url, nonce, sysver
        for name, version, msg in resources:
            res = r.resources.add()
            res.name, res.version = name, version
            res.resource.Pack(msg)
        r.removed_resources.extend(removed)
        return r

    # --- the gRPC handler: one stream at a time, driven by run() ---
    def handle(self, request_iterator, context):
        reqs, resps = queue.Queue(), queue.Queue()

        def read():
            try:
                for r in request_iterator:
                    reqs.put(r)
            except Exception:  # the stream ended
                pass
            reqs.put(None)

        threading.Thread(target=read, daemon=True).start()
        self.streams.put((reqs, resps))
        while True:
            r = resps.get()
            if r is None:  # end this stream
                context.abort(grpc.StatusCode.UNAVAILABLE, "stand-in: stream ended by script")
            yield r

    # --- checks ---
    def expect(self, reqs, type_url, what):
        try:
            r = reqs.get(timeout=WAIT)
        except queue.Empty:
            raise Fail(f"{what}: no request within {WAIT}s")
        if r is None:
            raise Fail(f"{what}: the stream ended")
        if r.type_url != type_url:
            raise Fail(f"{what}: got a request of type {r.type_url} "
                       f"(nonce {r.response_nonce!r}, subscribe {list(r.resource_names_subscribe)})")
        return r

    def expect_ack(self, reqs, type_url, nonce, what):
        r = self.expect(reqs, type_url, what)
        if r.response_nonce != nonce:
            raise Fail(f"{what}: response_nonce {r.response_nonce!r}, want {nonce!r}")
        if r.HasField("error_detail"):
            raise Fail(f"{what}: NACK {r.error_detail.message!r}")
        if r.resource_names_subscribe or r.resource_names_unsubscribe:
            raise Fail(f"{what}: an ACK that also changes the subscription")
        return r

    def expect_sub(self, reqs, type_url, sub, unsub, what):
        r = self.expect(reqs, type_url, what)
        if r.response_nonce:
            raise Fail(f"{what}: a subscription change carries nonce {r.response_nonce!r}")
        if sorted(r.resource_names_subscribe) != sorted(sub) or \
                sorted(r.resource_names_unsubscribe) != sorted(unsub):
            raise Fail(f"{what}: subscribe {list(r.resource_names_subscribe)} unsubscribe "
                       f"{list(r.resource_names_unsubscribe)}, want {sub} / {unsub}")
        return r

    def run(self):
        reqs, resps = self.streams.get(timeout=WAIT)
        # 1. The first request: CDS, the node, the (legacy) wildcard, nothing held yet.
        r = self.expect(reqs, CDS, "first request")
        if not r.node.id:
            raise Fail("first request: no node")
        if [n for n in r.resource_names_subscribe if n != "*"]:
            raise Fail(f"first request: CDS names {list(r.resource_names_subscribe)}")
        if r.initial_resource_versions:
            raise Fail("first request: initial_resource_versions on a first stream")
        resps.put(self.response(CDS, "c1", "sv-1", [
            ("a", "a-1", self.eds_cluster("a")),
            (XDSTP, "b-1", self.eds_cluster(XDSTP))]))
        # 2. EDS subscription to both names (the xdstp one as it is), then the CDS ACK.
        self.expect_sub(reqs, EDS, ["a", XDSTP], [], "EDS subscription")
        self.expect_ack(reqs, CDS, "c1", "CDS ACK")
        # 3. A type never asked for is ignored (no ACK); EDS is ACKed by its nonce.
        resps.put(self.response(UNKNOWN, "u1", "sv-1"))
        resps.put(self.response(EDS, "e1", "sv-1", [
            ("a", "ea-1", self.cla("a", "10.0.0.1", 80)),
            (XDSTP, "eb-1", self.cla(XDSTP, "10.0.0.2", 80))]))
        self.expect_ack(reqs, EDS, "e1", "EDS ACK (the unknown type gets no ACK)")
        # 4. LDS (wildcard) once clusters are warm; a listener naming the xdstp cluster.
        r = self.expect(reqs, LDS, "LDS request")
        if r.response_nonce or [n for n in r.resource_names_subscribe if n != "*"]:
            raise Fail("LDS request: not a first wildcard request")
        resps.put(self.response(LDS, "l1", "sv-1", [
            ("tcp", "l-1", self.tcp_listener("tcp", 7000, XDSTP))]))
        self.expect_ack(reqs, LDS, "l1", "LDS ACK")
        # 5. removed_resources: "a" goes; the client unsubscribes its endpoints, then ACKs.
        resps.put(self.response(CDS, "c2", "sv-2", [], ["a"]))
        self.expect_sub(reqs, EDS, [], ["a"], "EDS unsubscription")
        self.expect_ack(reqs, CDS, "c2", "CDS ACK of the removal")
        # 6. One bad cluster among good: NACKed by nonce, naming it.
        resps.put(self.response(CDS, "c3", "sv-3", [
            ("bad", "bad-1", self.eds_cluster("bad", "CLUSTER_PROVIDED")),
            ("c", "c-1", self.static_cluster("c"))]))
        r = self.expect(reqs, CDS, "CDS NACK")
        if r.response_nonce != "c3" or not r.HasField("error_detail"):
            raise Fail(f"CDS NACK: nonce {r.response_nonce!r}, error_detail {r.HasField('error_detail')}")
        if "bad" not in r.error_detail.message:
            raise Fail(f"CDS NACK: error_detail does not name \"bad\": {r.error_detail.message!r}")
        # 7. The stream breaks; the client reconnects naming what it holds, by version.
        resps.put(None)
        reqs, resps = self.streams.get(timeout=WAIT)
        r = self.expect(reqs, CDS, "first CDS request after reconnect")
        if not r.node.id:
            raise Fail("reconnect: no node on the new stream's first request")
        want = {XDSTP: "b-1", "c": "c-1"}
        if dict(r.initial_resource_versions) != want:
            raise Fail(f"reconnect: CDS initial_resource_versions {dict(r.initial_resource_versions)}, want {want}")
        r = self.expect(reqs, EDS, "EDS request after reconnect")
        if list(r.resource_names_subscribe) != [XDSTP] or \
                dict(r.initial_resource_versions) != {XDSTP: "eb-1"}:
            raise Fail(f"reconnect: EDS subscribe {list(r.resource_names_subscribe)} initial "
                       f"{dict(r.initial_resource_versions)}")
        r = self.expect(reqs, LDS, "LDS request after reconnect")
        if dict(r.initial_resource_versions) != {"tcp": "l-1"}:
            raise Fail(f"reconnect: LDS initial {dict(r.initial_resource_versions)}")
        # Nothing changed: an empty answer to the wildcard, ACKed.
        resps.put(self.response(CDS, "c4", "sv-4"))
        self.expect_ack(reqs, CDS, "c4", "CDS ACK after reconnect")


def main():
    cls = load(sys.argv[1])
    result_file = sys.argv[2]
    script = Script(cls)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
            script.handle, request_deserializer=script.Req.FromString,
            response_serializer=script.Resp.SerializeToString)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    try:
        script.run()
        result = "OK"
    except Fail as e:
        result = f"FAIL: {e}"
    except queue.Empty:
        result = "FAIL: the client did not connect (again)"
    with open(result_file + ".tmp", "w") as f:
        f.write(result + "\n")
    os.rename(result_file + ".tmp", result_file)
    print(result, flush=True)
    server.stop(0)
    os._exit(0)  # handler threads may still wait on a stream


if __name__ == "__main__":
    main()
