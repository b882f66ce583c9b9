// Istio's TCP metrics from the kernel path, end to end on a local cluster (issue 17): a
// TCP service the kernel serves alone (Istio's tcp-echo sample; no proxy on the path),
// a client pod (sleep) that sends N bytes and reads M back on one connection. The
// agent's /stats/prometheus, parsed by a real Prometheus parser
// (python3-prometheus-client), must then count that connection once as opened and once
// as closed, with its bytes, labelled as Istio's client side labels a TCP connection.
#include <nlohmann/json.hpp>

#include "harness.h"

using namespace sluice::local_test;

namespace {

const char* kEcho = R"(apiVersion: apps/v1
kind: Deployment
metadata:
  name: tcp-echo-v1
spec:
  replicas: 1
  selector:
    matchLabels: {app: tcp-echo, version: v1}
  template:
    metadata:
      labels: {app: tcp-echo, version: v1}
    spec:
      containers:
      - name: tcp-echo
        image: registry.istio.io/release/tcp-echo-server:1.3
        args: ["9000", "one"]
        ports:
        - containerPort: 9000
---
apiVersion: v1
kind: Service
metadata:
  name: tcp-echo
spec:
  selector: {app: tcp-echo}
  ports:
  - {name: tcp, port: 9000}
)";

// One connection: LINES lines of 1000 bytes; reads each answer ("one " + the line) whole,
// then closes. Prints the bytes sent and received.
const char* kClientPy = R"(
import socket, sys
host, port, lines = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port), timeout=5)
sent = received = 0
for i in range(lines):
    line = (b"%04d" % i) + b"x" * 995 + b"\n"
    s.sendall(line)
    sent += len(line)
    want = len(b"one ") + len(line)
    data = b""
    while len(data) < want:
        chunk = s.recv(want - len(data))
        if not chunk:
            sys.exit("closed early")
        data += chunk
    received += len(data)
s.close()
print(sent, received)
)";

// Sums of the scrape's samples, by sample name, whose labels include `want`; parsed by
// prometheus_client (which also refuses text that is not valid Prometheus text).
const char* kParsePy = R"(
import json, sys
from prometheus_client.parser import text_string_to_metric_families as families
want = json.loads(sys.argv[2])
out = {}
for f in families(open(sys.argv[1]).read()):
    for s in f.samples:
        if all(s.labels.get(k) == v for k, v in want.items()):
            out[s.name] = out.get(s.name, 0) + s.value
print(json.dumps(out))
)";

}  // namespace

TEST_CASE(
    "local cluster: a TCP connection the kernel serves alone shows in istio_tcp_* on "
    "/stats/prometheus, opened and closed once, with its exact bytes") {
  TestCluster tc;
  REQUIRE(tc.UpEnrolled(std::string(kEcho) + "---\n" + kSleep));
  const std::string pins = "--pin-root=" + tc.pins;
  REQUIRE(WaitUntil([&] {
    // Named by istiod's listener (VIP_PORT) or by the service.
    const std::string dump = Ctl({"bpf", pins, "dump", "services"}).out;
    return dump.find("tcp-echo") != std::string::npos || dump.find("_9000") != std::string::npos;
  }));
  const std::string client = tc.Write("client.py", kClientPy);
  const std::string parse = tc.Write("parse.py", kParsePy);
  const nlohmann::json want = {{"reporter", "source"},
                               {"source_workload", "sleep"},
                               {"source_workload_namespace", "default"},
                               {"source_app", "sleep"},
                               {"destination_service", "tcp-echo.default.svc.cluster.local"},
                               {"destination_service_name", "tcp-echo"},
                               {"destination_service_namespace", "default"},
                               {"destination_workload", "tcp-echo-v1"},
                               {"destination_workload_namespace", "default"},
                               {"destination_app", "tcp-echo"},
                               {"destination_version", "v1"},
                               {"request_protocol", "tcp"},
                               {"response_flags", "-"},
                               {"connection_security_policy", "unknown"}};
  auto scrape = [&] {
    const std::string text = Sh("curl -sf http://" + tc.admin + "/stats/prometheus");
    tc.Write("scrape.txt", text);
    const std::string out =
        Sh("/usr/bin/python3 " + parse + " " + tc.dir + "/scrape.txt '" + want.dump() + "' 2>&1");
    INFO(text << "\n" << out);
    auto j = nlohmann::json::parse(out, nullptr, false);
    REQUIRE(j.is_object());
    return std::pair{text, j};
  };
  auto value = [](const nlohmann::json& j, const char* name) {
    return j.contains(name) ? j[name].get<double>() : 0.0;
  };

  const nlohmann::json before = scrape().second;
  const uint64_t translated = Counter(tc.admin, "translated");
  const uint64_t redirected = Counter(tc.admin, "redirected");
  Run r = tc.Local({"exec", "deploy/sleep", "--", "python3", client, "tcp-echo", "9000", "5"}, 60);
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  std::istringstream in(r.out);
  double sent = 0, received = 0;
  in >> sent >> received;
  REQUIRE(sent == 5000);
  REQUIRE(received == 5020);

  // The connection closes in the kernel a moment after the client exits.
  std::string text;
  nlohmann::json after;
  REQUIRE(WaitUntil(
      [&] {
        std::tie(text, after) = scrape();
        return value(after, "istio_tcp_connections_closed_total") -
                   value(before, "istio_tcp_connections_closed_total") ==
               1;
      },
      15));
  INFO(text);
  CHECK(value(after, "istio_tcp_connections_opened_total") -
            value(before, "istio_tcp_connections_opened_total") ==
        1);
  // Istio's sides: received is what the client sent, sent what it was sent.
  CHECK(value(after, "istio_tcp_received_bytes_total") -
            value(before, "istio_tcp_received_bytes_total") ==
        sent);
  CHECK(value(after, "istio_tcp_sent_bytes_total") - value(before, "istio_tcp_sent_bytes_total") ==
        received);
  // The kernel decided it, and no proxy carried it (a proxy would have counted it too).
  CHECK(Counter(tc.admin, "translated") > translated);
  CHECK(Counter(tc.admin, "redirected") == redirected);
  // Valid text: one # TYPE line per metric.
  std::map<std::string, int> types;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind("# TYPE ", 0) == 0)
      types[line]++;
  CHECK(types["# TYPE istio_tcp_connections_opened_total counter"] == 1);
  for (const auto& [t, n] : types) {
    INFO(t);
    CHECK(n == 1);
  }
}
