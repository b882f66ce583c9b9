// Decoders of the Kubernetes kinds Sluice reads: Service, Pod and Deployment (the
// workloads, their labels, container ports and addresses), Endpoints and EndpointSlice.
// Only the fields Sluice uses are read; the rest of their schema is not checked.
#include <algorithm>
#include <set>

#include "loader/decode.h"

namespace sluice::istio::detail {

namespace {

std::vector<ContainerPort> DecodeContainers(const Field& podspec) {
  std::vector<ContainerPort> out;
  for (auto& c : podspec["containers"].List()) {
    for (auto& pf : c["ports"].List()) {
      ContainerPort p;
      p.name = pf["name"].StrOr("");
      p.port = pf["containerPort"].Port().value_or(0);
      out.push_back(std::move(p));
    }
  }
  return out;
}

std::vector<std::string> SplitIps(const std::string& s);

// The sluice.io/pod-ips annotation: the addresses of a Pod or a Deployment's replicas.
std::vector<std::string> AnnotatedIps(const Field& doc, const Meta& meta) {
  auto it = meta.annotations.find("sluice.io/pod-ips");
  if (it == meta.annotations.end())
    return {};
  auto ips = SplitIps(it->second);
  for (const auto& ip : ips)
    CheckIp(doc["metadata"]["annotations"]["sluice.io/pod-ips"], ip);
  return ips;
}

std::vector<std::string> SplitIps(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s + ",") {
    if (c == ',' || c == ' ') {
      if (!cur.empty())
        out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  return out;
}

}  // namespace

Service DecodeService(const Field& doc, const Meta& meta) {
  Service s;
  s.meta = meta;
  Field spec = doc["spec"];
  s.selector = spec["selector"].StrMap();
  s.cluster_ip = spec["clusterIP"].StrOr("");
  std::set<std::string> names;
  std::set<std::pair<uint32_t, std::string>> numbers;
  for (auto& pf : spec["ports"].List()) {
    ServicePort p;
    p.name = pf["name"].StrOr("");
    if (!pf["port"].present())
      pf["port"].Error("required");
    p.port = pf["port"].Port().value_or(0);
    p.protocol = Upper(pf["protocol"].StrOr("TCP"));
    if (p.protocol != "TCP" && p.protocol != "UDP" && p.protocol != "SCTP") {
      pf["protocol"].Error("must be TCP, UDP or SCTP");
    }
    p.app_protocol = pf["appProtocol"].StrOr("");
    Field tp = pf["targetPort"];
    if (tp.present()) {
      if (tp.is_scalar() && tp.node().Tag() != "!" &&
          tp.node().Scalar().find_first_not_of("0123456789") == std::string::npos) {
        p.target_port = tp.Port().value_or(0);
      } else {
        p.target_port_name = tp.Required();
      }
    }
    if (!p.name.empty() && !names.insert(p.name).second) {
      pf["name"].Error("duplicate port name \"" + p.name + "\"");
    }
    if (!numbers.insert({p.port, p.protocol}).second) {
      pf["port"].Error("duplicate port " + std::to_string(p.port) + "/" + p.protocol);
    }
    s.ports.push_back(std::move(p));
  }
  return s;
}

Workload DecodePod(const Field& doc, const Meta& meta) {
  Workload w;
  w.kind = "Pod";
  w.meta = meta;
  w.pod_labels = meta.labels;
  w.container_ports = DecodeContainers(doc["spec"]);
  Field status = doc["status"];
  for (auto& ip : status["podIPs"].List()) {
    w.ips.push_back(ip["ip"].Required());
    CheckIp(ip["ip"], w.ips.back());
  }
  if (w.ips.empty()) {
    if (auto ip = status["podIP"].Str()) {
      w.ips.push_back(*ip);
      CheckIp(status["podIP"], *ip);
    }
  }
  if (w.ips.empty())
    w.ips = AnnotatedIps(doc, meta);
  return w;
}

Workload DecodeDeployment(const Field& doc, const Meta& meta) {
  Workload w;
  w.kind = "Deployment";
  w.meta = meta;
  Field tmpl = doc["spec"]["template"];
  w.pod_labels = tmpl["metadata"]["labels"].StrMap();
  w.container_ports = DecodeContainers(tmpl["spec"]);
  w.ips = AnnotatedIps(doc, meta);
  return w;
}

EndpointGroup DecodeEndpoints(const Field& doc, const Meta& meta) {
  EndpointGroup g;
  g.kind = "Endpoints";
  g.meta = meta;
  g.service = meta.name;
  // Endpoints has subsets[] of addresses x ports; flatten while every subset shares ports.
  for (auto& sub : doc["subsets"].List()) {
    std::vector<EndpointPort> ports;
    for (auto& pf : sub["ports"].List()) {
      ports.push_back(EndpointPort{pf["name"].StrOr(""), pf["port"].Port().value_or(0)});
    }
    for (auto& af : sub["addresses"].List()) {
      EndpointAddress a;
      a.ip = af["ip"].Required();
      CheckIp(af["ip"], a.ip);
      if (af["targetRef"]["kind"].StrOr("") == "Pod")
        a.target_pod = af["targetRef"]["name"].StrOr("");
      g.addresses.push_back(std::move(a));
    }
    for (auto& p : ports) {
      bool seen = std::any_of(g.ports.begin(), g.ports.end(),
                              [&](const EndpointPort& q) { return q.name == p.name; });
      if (!seen)
        g.ports.push_back(p);
    }
  }
  return g;
}

EndpointGroup DecodeEndpointSlice(const Field& doc, const Meta& meta) {
  EndpointGroup g;
  g.kind = "EndpointSlice";
  g.meta = meta;
  auto it = meta.labels.find("kubernetes.io/service-name");
  if (it == meta.labels.end()) {
    doc["metadata"]["labels"].Error("must carry kubernetes.io/service-name");
  } else {
    g.service = it->second;
  }
  for (auto& ef : doc["endpoints"].List()) {
    auto ready = ef["conditions"]["ready"].Bool();
    if (ready.has_value() && !*ready)
      continue;
    std::string pod;
    if (ef["targetRef"]["kind"].StrOr("") == "Pod")
      pod = ef["targetRef"]["name"].StrOr("");
    auto ips = ef["addresses"].StrList();
    auto fields = ef["addresses"].List();
    for (std::size_t i = 0; i < ips.size(); ++i) {
      CheckIp(fields[i], ips[i]);
      g.addresses.push_back(EndpointAddress{ips[i], pod, {}});
    }
  }
  for (auto& pf : doc["ports"].List()) {
    g.ports.push_back(EndpointPort{pf["name"].StrOr(""), pf["port"].Port().value_or(0)});
  }
  return g;
}

}  // namespace sluice::istio::detail
