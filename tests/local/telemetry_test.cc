// Istio's standard metrics end to end on a local cluster: an enrolled client (Istio's
// sleep sample) sends a known mix of requests to helloworld's two versions through its
// in-pod proxy (a VirtualService routes by header, so the proxy serves the service);
// the agent's /stats/prometheus must then carry exactly that mix per response_code and
// destination_workload, labelled as Istio labels it, and parse as Prometheus text. Then a
// Telemetry disabling REQUEST_COUNT for the namespace reaches the proxy as istiod's
// istio.stats config: new requests add to no istio_requests_total series (the duration
// histogram still counts them).
#include "harness.h"

using namespace sluice::local_test;

namespace {

const char* kHelloworld = R"(apiVersion: v1
kind: Service
metadata:
  name: helloworld
spec:
  ports:
  - {port: 5000, name: http}
  selector: {app: helloworld}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: helloworld-v1
spec:
  replicas: 1
  selector:
    matchLabels: {app: helloworld, version: v1}
  template:
    metadata:
      labels: {app: helloworld, version: v1}
    spec:
      containers:
      - name: helloworld
        image: docker.io/istio/examples-helloworld-v1
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: helloworld-v2
spec:
  replicas: 1
  selector:
    matchLabels: {app: helloworld, version: v2}
  template:
    metadata:
      labels: {app: helloworld, version: v2}
    spec:
      containers:
      - name: helloworld
        image: docker.io/istio/examples-helloworld-v2
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: helloworld
spec:
  host: helloworld.default.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: helloworld
spec:
  hosts: [helloworld.default.svc.cluster.local]
  http:
  - match:
    - headers:
        x-version: {exact: v1}
    route:
    - destination: {host: helloworld.default.svc.cluster.local, subset: v1}
  - route:
    - destination: {host: helloworld.default.svc.cluster.local, subset: v2}
)";

// The value of every istio_requests_total sample whose labels include all of `want`.
double Requests(const std::string& text,
                const std::vector<std::pair<std::string, std::string>>& want) {
  double sum = 0;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("istio_requests_total{", 0) != 0)
      continue;
    bool all = true;
    for (const auto& [k, v] : want) {
      const std::string pair = k + "=\"" + v + "\"";
      all = all && (line.find("," + pair) != std::string::npos ||
                    line.find("{" + pair) != std::string::npos);
    }
    if (all)
      sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

}  // namespace

TEST_CASE(
    "local cluster: after a known request mix, istio_requests_total on the agent's "
    "/stats/prometheus counts it exactly per response_code and destination_workload") {
  TestCluster tc;
  REQUIRE(tc.UpEnrolled(std::string(kHelloworld) + "---\n" + kSleep));
  // curl from the client pod: the status code, or curl's exit status ("exit N").
  auto status = [&](const std::string& path, const std::string& header = "") {
    std::vector<std::string> cmd = {"exec",         "deploy/sleep", "--",        "curl",
                                    "-s",           "-o",           "/dev/null", "-w",
                                    "%{http_code}", "--max-time",   "5"};
    if (!header.empty()) {
      cmd.push_back("-H");
      cmd.push_back(header);
    }
    cmd.push_back("http://helloworld:5000" + path);
    Run r = tc.Local(cmd, 30);
    return r.status == 0 ? r.out : "exit " + std::to_string(r.status);
  };
  auto scrape = [&] { return Sh("curl -s http://" + tc.admin + "/stats/prometheus"); };
  // Enrolled, with the header route in force: a v1 request reaches v1 through the proxy
  // (the kernel alone would spread it over both versions).
  REQUIRE(WaitUntil(
      [&] {
        return status("/hello", "x-version: v1") == "200" &&
               Requests(scrape(), {{"destination_workload", "helloworld-v1"}}) > 0;
      },
      30));
  const std::string before = scrape();
  auto count = [&](const std::string& text, const std::string& code, const std::string& wl) {
    return Requests(text, {{"reporter", "source"},
                           {"source_workload", "sleep"},
                           {"response_code", code},
                           {"destination_workload", wl}});
  };
  const double v1_before = count(before, "200", "helloworld-v1");

  for (int i = 0; i < 7; ++i)
    CHECK(status("/hello") == "200");
  for (int i = 0; i < 3; ++i)
    CHECK(status("/nothere") == "404");
  for (int i = 0; i < 2; ++i)
    CHECK(status("/hello", "x-version: v1") == "200");

  std::string text;
  REQUIRE(WaitUntil(
      [&] {
        text = scrape();
        return count(text, "200", "helloworld-v1") - v1_before == 2;
      },
      10));
  INFO(text);
  CHECK(count(text, "200", "helloworld-v2") - count(before, "200", "helloworld-v2") == 7);
  CHECK(count(text, "404", "helloworld-v2") - count(before, "404", "helloworld-v2") == 3);
  CHECK(count(text, "404", "helloworld-v1") == count(before, "404", "helloworld-v1"));
  // Labelled as Istio labels them: the service from istiod's cluster metadata, the
  // workloads from the pods, the endpoint's canonical revision from its metadata.
  CHECK(Requests(text, {{"reporter", "source"},
                        {"source_workload", "sleep"},
                        {"source_workload_namespace", "default"},
                        {"source_app", "sleep"},
                        {"source_principal", "unknown"},
                        {"destination_service", "helloworld.default.svc.cluster.local"},
                        {"destination_service_name", "helloworld"},
                        {"destination_service_namespace", "default"},
                        {"destination_workload", "helloworld-v2"},
                        {"destination_workload_namespace", "default"},
                        {"destination_canonical_service", "helloworld"},
                        {"destination_canonical_revision", "v2"},
                        {"destination_app", "helloworld"},
                        {"destination_version", "v2"},
                        {"request_protocol", "http"},
                        {"response_flags", "-"},
                        {"connection_security_policy", "unknown"}}) >= 7);
  CHECK(text.find("# TYPE istio_requests_total counter") != std::string::npos);
  CHECK(text.find("# TYPE istio_request_duration_milliseconds histogram") != std::string::npos);
  // A real Prometheus parser reads the scrape (Debian's python3-prometheus-client).
  tc.Write("scrape.txt", text);
  const std::string parsed =
      Sh("/usr/bin/python3 -c 'import sys; from prometheus_client.parser import "
         "text_string_to_metric_families as p; f = list(p(open(sys.argv[1]).read())); "
         "print(\"families\", len(f), sum(len(x.samples) for x in f))' " +
         tc.dir + "/scrape.txt 2>&1");
  INFO(parsed);
  CHECK(parsed.rfind("families ", 0) == 0);

  // Telemetry: REQUEST_COUNT disabled in default. The series already counted stay (their
  // chains' old config keeps them); new requests add to none, and the histogram counts on.
  auto durations = [&](const std::string& t) {
    double sum = 0;
    std::istringstream in(t);
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("istio_request_duration_milliseconds_count{", 0) == 0 &&
          line.find("source_workload=\"sleep\"") != std::string::npos &&
          line.find("reporter=\"source\"") != std::string::npos)
        sum += std::stod(line.substr(line.rfind(' ') + 1));
    }
    return sum;
  };
  Run applied =
      tc.Local({"apply", "-f", tc.Write("telemetry.yaml", R"(apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: no-request-count, namespace: default}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT}
      disabled: true
)")});
  INFO(applied.out << applied.err);
  REQUIRE(applied.status == 0);
  // The config reaches the proxy when a request no longer adds to the counter but still
  // adds to the histogram.
  std::string after;
  REQUIRE(WaitUntil(
      [&] {
        const std::string a = scrape();
        const double total = Requests(a, {{"reporter", "source"}, {"source_workload", "sleep"}});
        const double hist = durations(a);
        if (status("/hello") != "200")
          return false;
        after = scrape();
        return Requests(after, {{"reporter", "source"}, {"source_workload", "sleep"}}) == total &&
               durations(after) == hist + 1;
      },
      30));
  const double total = Requests(after, {{"reporter", "source"}, {"source_workload", "sleep"}});
  const double hist = durations(after);
  for (int i = 0; i < 3; ++i)
    CHECK(status("/hello") == "200");
  REQUIRE(WaitUntil([&] { return durations(scrape()) == hist + 3; }, 10));
  CHECK(Requests(scrape(), {{"reporter", "source"}, {"source_workload", "sleep"}}) == total);
}
