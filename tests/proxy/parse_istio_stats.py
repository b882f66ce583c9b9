#!/usr/bin/python3
"""Parses the proxy's Istio metrics with a real Prometheus text parser.

Runs the scrape tool (istio_stats_scrape: a known traffic mix through a real proxy),
parses its output with prometheus_client's text parser (Debian's
python3-prometheus-client), and checks what a Prometheus server would read: every metric
family with its type, the exact request counts per response_code and
destination_workload, histograms whose cumulative buckets end at their count, and the
TCP byte counters equal to what the client sent and received. Exits non-zero naming
the first mismatch.
"""
import re
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 2:
        fail("usage: parse_istio_stats.py ISTIO_STATS_SCRAPE_BINARY")
    run = subprocess.run([sys.argv[1]], capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        fail("%s exited %d: %s" % (sys.argv[1], run.returncode, run.stderr))
    text = run.stdout
    m = re.search(r"tcp_sent=(\d+) tcp_received=(\d+)", run.stderr)
    if not m:
        fail("the scrape tool did not report its TCP bytes: " + run.stderr)
    tcp_sent, tcp_received = int(m.group(1)), int(m.group(2))

    families = {f.name: f for f in text_string_to_metric_families(text)}
    want_types = {
        "istio_requests": "counter",
        "istio_request_duration_milliseconds": "histogram",
        "istio_request_bytes": "histogram",
        "istio_response_bytes": "histogram",
        "istio_tcp_sent_bytes": "counter",
        "istio_tcp_received_bytes": "counter",
        "istio_tcp_connections_opened": "counter",
        "istio_tcp_connections_closed": "counter",
    }
    for name, typ in want_types.items():
        if name not in families:
            fail("no metric family %s in:\n%s" % (name, text))
        if families[name].type != typ:
            fail("%s is a %s, not a %s" % (name, families[name].type, typ))

    istio_labels = {
        "reporter", "source_workload", "source_canonical_service", "source_canonical_revision",
        "source_workload_namespace", "source_principal", "source_app", "source_version",
        "source_cluster", "destination_workload", "destination_workload_namespace",
        "destination_principal", "destination_app", "destination_version", "destination_service",
        "destination_canonical_service", "destination_canonical_revision",
        "destination_service_name", "destination_service_namespace", "destination_cluster",
        "request_protocol", "response_flags", "connection_security_policy"}
    counts = {}
    for s in families["istio_requests"].samples:
        missing = (istio_labels | {"response_code", "grpc_response_status"}) - set(s.labels)
        if missing:
            fail("istio_requests_total lacks labels %s" % sorted(missing))
        key = (s.labels["reporter"], s.labels["response_code"], s.labels["destination_workload"])
        counts[key] = counts.get(key, 0) + s.value
    want = {
        ("source", "200", "reviews-v2"): 7,
        ("source", "404", "reviews-v2"): 3,
        ("source", "503", "reviews-v1"): 2,
        ("source", "503", "unknown"): 1,
        ("destination", "200", "productpage-v1"): 4,
    }
    if counts != want:
        fail("istio_requests_total per (reporter, response_code, destination_workload): %s, want %s"
             % (counts, want))

    for name in ("istio_request_duration_milliseconds", "istio_request_bytes",
                 "istio_response_bytes"):
        series = {}
        for s in families[name].samples:
            labels = dict(s.labels)
            le = labels.pop("le", None)
            key = tuple(sorted(labels.items()))
            series.setdefault(key, {"buckets": [], "count": None})
            if s.name.endswith("_bucket"):
                series[key]["buckets"].append((float(le), s.value))
            elif s.name.endswith("_count"):
                series[key]["count"] = s.value
        total = 0
        for key, v in series.items():
            values = [c for _, c in sorted(v["buckets"])]
            if values != sorted(values):
                fail("%s buckets are not cumulative: %s" % (name, v["buckets"]))
            if not v["buckets"] or sorted(v["buckets"])[-1][0] != float("inf"):
                fail("%s has no +Inf bucket" % name)
            if values[-1] != v["count"]:
                fail("%s +Inf bucket %s != count %s" % (name, values[-1], v["count"]))
            total += v["count"]
        if total != 17:
            fail("%s counts %s requests, want 17" % (name, total))

    def tcp(name):
        return sum(s.value for s in families[name].samples
                   if s.labels.get("destination_workload") == "ratings-v1")
    if tcp("istio_tcp_connections_opened") != 1 or tcp("istio_tcp_connections_closed") != 1:
        fail("TCP connections opened/closed: %s/%s, want 1/1"
             % (tcp("istio_tcp_connections_opened"), tcp("istio_tcp_connections_closed")))
    if tcp("istio_tcp_received_bytes") != tcp_sent:
        fail("istio_tcp_received_bytes_total %s, the client sent %d"
             % (tcp("istio_tcp_received_bytes"), tcp_sent))
    if tcp("istio_tcp_sent_bytes") != tcp_received:
        fail("istio_tcp_sent_bytes_total %s, the client received %d"
             % (tcp("istio_tcp_sent_bytes"), tcp_received))
    print("ok: %d metric families parsed, %d samples"
          % (len(families), sum(len(f.samples) for f in families.values())))


if __name__ == "__main__":
    main()
