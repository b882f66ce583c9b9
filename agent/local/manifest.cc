#include "sluice/local/manifest.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

namespace sluice::local {
namespace {

namespace fs = std::filesystem;

// A field problem: the message names the field path.
struct FieldError {
  std::string field, what;
};

std::vector<std::string> SplitDocuments(const std::string& text) {
  std::vector<std::string> docs;
  std::string cur;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("---", 0) == 0 && (line.size() == 3 || line[3] == ' ' || line[3] == '\r')) {
      docs.push_back(cur);
      cur.clear();
      continue;
    }
    cur += line + "\n";
  }
  docs.push_back(cur);
  return docs;
}

bool Blank(const std::string& doc) {
  std::istringstream in(doc);
  std::string line;
  while (std::getline(in, line)) {
    auto p = line.find_first_not_of(" \t\r");
    if (p != std::string::npos && line[p] != '#')
      return false;
  }
  return true;
}

std::string Str(const YAML::Node& n, const std::string& field, bool required = false) {
  if (!n || n.IsNull()) {
    if (required)
      throw FieldError{field, "required"};
    return "";
  }
  if (!n.IsScalar())
    throw FieldError{field, "must be a string"};
  return n.as<std::string>();
}

int Int(const YAML::Node& n, const std::string& field, int def, int lo, int hi) {
  if (!n || n.IsNull())
    return def;
  int v = 0;
  if (!n.IsScalar() || !YAML::convert<int>::decode(n, v))
    throw FieldError{field, "must be an integer"};
  if (v < lo || v > hi)
    throw FieldError{field, std::to_string(v) + " is out of range " + std::to_string(lo) + ".." +
                                std::to_string(hi)};
  return v;
}

bool Bool(const YAML::Node& n, const std::string& field) {
  if (!n || n.IsNull())
    return false;
  bool v = false;
  if (!n.IsScalar() || !YAML::convert<bool>::decode(n, v))
    throw FieldError{field, "must be true or false"};
  return v;
}

Labels StrMap(const YAML::Node& n, const std::string& field) {
  Labels out;
  if (!n || n.IsNull())
    return out;
  if (!n.IsMap())
    throw FieldError{field, "must be a map of strings"};
  for (const auto& kv : n) {
    std::string k = kv.first.as<std::string>();
    out[k] = Str(kv.second, field + "." + k);
  }
  return out;
}

std::vector<std::string> StrList(const YAML::Node& n, const std::string& field) {
  std::vector<std::string> out;
  if (!n || n.IsNull())
    return out;
  if (!n.IsSequence())
    throw FieldError{field, "must be a list of strings"};
  for (std::size_t i = 0; i < n.size(); ++i)
    out.push_back(Str(n[i], field + "[" + std::to_string(i) + "]"));
  return out;
}

// Kubernetes names (RFC 1123 labels for pods, namespaces and services).
void CheckName(const std::string& name, const std::string& field) {
  bool ok = !name.empty() && name.size() <= 63;
  for (char c : name)
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-');
  ok = ok && name.front() != '-' && name.back() != '-';
  if (!ok)
    throw FieldError{field, "\"" + name +
                                "\" is not a valid name (lower-case letters, digits and '-', at "
                                "most 63, starting and ending alphanumeric)"};
}

// The downward API fields an env var may name (valueFrom.fieldRef.fieldPath).
constexpr const char* kDownwardFields =
    "metadata.name, metadata.namespace, metadata.uid, spec.serviceAccountName, spec.nodeName, "
    "status.podIP, status.podIPs, status.hostIP, status.hostIPs";

bool IsDownwardField(const std::string& path) {
  for (const char* f :
       {"metadata.name", "metadata.namespace", "metadata.uid", "spec.serviceAccountName",
        "spec.nodeName", "status.podIP", "status.podIPs", "status.hostIP", "status.hostIPs"})
    if (path == f)
      return true;
  return false;
}

PodSpec DecodePodSpec(const YAML::Node& meta, const YAML::Node& spec, const std::string& at) {
  PodSpec p;
  std::string mf = at.empty() ? "metadata" : at + ".metadata";
  p.labels = StrMap(meta["labels"], mf + ".labels");
  p.annotations = StrMap(meta["annotations"], mf + ".annotations");
  std::string sp = at.empty() ? "spec" : at + ".spec";
  if (!spec || !spec.IsMap())
    throw FieldError{sp, "required"};
  p.host_network = Bool(spec["hostNetwork"], sp + ".hostNetwork");
  p.service_account = Str(spec["serviceAccountName"], sp + ".serviceAccountName");
  if (p.service_account.empty())
    p.service_account = "default";
  const YAML::Node cs = spec["containers"];
  if (!cs || !cs.IsSequence() || cs.size() == 0)
    throw FieldError{sp + ".containers", "must list at least one container"};
  for (std::size_t i = 0; i < cs.size(); ++i) {
    std::string cf = sp + ".containers[" + std::to_string(i) + "]";
    const YAML::Node c = cs[i];
    if (!c.IsMap())
      throw FieldError{cf, "must be a map"};
    ContainerSpec cont;
    cont.name = Str(c["name"], cf + ".name", true);
    CheckName(cont.name, cf + ".name");
    cont.image = Str(c["image"], cf + ".image", true);
    cont.command = StrList(c["command"], cf + ".command");
    cont.args = StrList(c["args"], cf + ".args");
    if (const YAML::Node env = c["env"]; env && !env.IsNull()) {
      if (!env.IsSequence())
        throw FieldError{cf + ".env", "must be a list"};
      for (std::size_t k = 0; k < env.size(); ++k) {
        std::string ef = cf + ".env[" + std::to_string(k) + "]";
        EnvVar v{Str(env[k]["name"], ef + ".name", true), Str(env[k]["value"], ef + ".value"), ""};
        if (const YAML::Node from = env[k]["valueFrom"]; from && !from.IsNull()) {
          // The downward API's pod fields (Istio's samples pass INSTANCE_IP this way);
          // secrets, config maps and resource fields are not.
          const YAML::Node ref = from["fieldRef"];
          if (!from.IsMap() || !ref || !ref.IsMap())
            throw FieldError{ef + ".valueFrom", "only fieldRef is supported by the local cluster"};
          v.field_path = Str(ref["fieldPath"], ef + ".valueFrom.fieldRef.fieldPath", true);
          if (!IsDownwardField(v.field_path))
            throw FieldError{ef + ".valueFrom.fieldRef.fieldPath",
                             "\"" + v.field_path + "\" is not one the local cluster fills (" +
                                 std::string(kDownwardFields) + ")"};
        }
        cont.env.push_back(v);
      }
    }
    if (const YAML::Node ports = c["ports"]; ports && !ports.IsNull()) {
      if (!ports.IsSequence())
        throw FieldError{cf + ".ports", "must be a list"};
      for (std::size_t k = 0; k < ports.size(); ++k) {
        std::string pf = cf + ".ports[" + std::to_string(k) + "]";
        ContainerPort cp;
        cp.port = Int(ports[k]["containerPort"], pf + ".containerPort", 0, 1, 65535);
        if (cp.port == 0)
          throw FieldError{pf + ".containerPort", "required"};
        cp.name = Str(ports[k]["name"], pf + ".name");
        cont.ports.push_back(cp);
      }
    }
    for (const auto& prev : p.containers)
      if (prev.name == cont.name)
        throw FieldError{cf + ".name", "\"" + cont.name + "\" is used by another container"};
    p.containers.push_back(std::move(cont));
  }
  YAML::Emitter e;
  e << meta["labels"] << spec;
  if (meta["annotations"])  // only when present: unannotated pods keep the hash they had
    e << meta["annotations"];
  p.hash = std::to_string(std::hash<std::string>{}(e.c_str()));
  return p;
}

ServiceRec DecodeService(const YAML::Node& doc, ServiceRec svc) {
  const YAML::Node spec = doc["spec"];
  if (!spec || !spec.IsMap())
    throw FieldError{"spec", "required"};
  svc.selector = StrMap(spec["selector"], "spec.selector");
  svc.cluster_ip = Str(spec["clusterIP"], "spec.clusterIP");
  const YAML::Node ports = spec["ports"];
  if (!ports || !ports.IsSequence() || ports.size() == 0)
    throw FieldError{"spec.ports", "must list at least one port"};
  for (std::size_t i = 0; i < ports.size(); ++i) {
    std::string pf = "spec.ports[" + std::to_string(i) + "]";
    ServicePortRec p;
    p.name = Str(ports[i]["name"], pf + ".name");
    p.port = Int(ports[i]["port"], pf + ".port", 0, 1, 65535);
    if (p.port == 0)
      throw FieldError{pf + ".port", "required"};
    p.protocol = Str(ports[i]["protocol"], pf + ".protocol");
    if (p.protocol.empty())
      p.protocol = "TCP";
    if (p.protocol != "TCP" && p.protocol != "UDP" && p.protocol != "SCTP")
      throw FieldError{pf + ".protocol", "\"" + p.protocol + "\" is not TCP, UDP or SCTP"};
    const YAML::Node tp = ports[i]["targetPort"];
    int n = 0;
    if (!tp || tp.IsNull())
      p.target_port = p.port;
    else if (tp.IsScalar() && YAML::convert<int>::decode(tp, n))
      p.target_port = Int(tp, pf + ".targetPort", 0, 1, 65535);
    else
      p.target_port_name = Str(tp, pf + ".targetPort");
    if (ports.size() > 1 && p.name.empty())
      throw FieldError{pf + ".name", "required when a Service has more than one port"};
    svc.ports.push_back(p);
  }
  return svc;
}

bool IsIstioApi(const std::string& api) {
  for (const char* g : {"networking.istio.io/", "security.istio.io/", "telemetry.istio.io/",
                        "extensions.istio.io/", "install.istio.io/"})
    if (api.rfind(g, 0) == 0)
      return true;
  return false;
}

void DecodeDocument(const std::string& text, const std::string& file, int index,
                    const std::string& default_ns, ManifestSet& out) {
  std::string where = file + ": document " + std::to_string(index);
  YAML::Node doc;
  try {
    doc = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    out.errors.push_back(where + ": not valid YAML: " + e.what());
    return;
  }
  if (!doc.IsMap()) {
    out.errors.push_back(where + ": not a Kubernetes object (expected a map)");
    return;
  }
  std::string kind, ns, name;
  try {
    std::string api = Str(doc["apiVersion"], "apiVersion", true);
    kind = Str(doc["kind"], "kind", true);
    const YAML::Node meta = doc["metadata"];
    if (!meta || !meta.IsMap())
      throw FieldError{"metadata", "required"};
    name = Str(meta["name"], "metadata.name", true);
    ns = Str(meta["namespace"], "metadata.namespace");
    bool cluster_scoped = kind == "Namespace" || (kind == "ExternalHost" && api == "sluice.io/v1");
    if (ns.empty() && !cluster_scoped)
      ns = default_ns;
    std::string label = kind + " " + (ns.empty() ? name : ns + "/" + name);
    where += " (" + label + ")";
    Document d{file, index, where, IgnoredObj{kind, ns, name}};

    if (api == "v1" && kind == "Namespace") {
      CheckName(name, "metadata.name");
      d.object = NamespaceObj{{name, StrMap(meta["labels"], "metadata.labels")}};
    } else if (api == "v1" && kind == "Pod") {
      CheckName(name, "metadata.name");
      d.object = PodObj{ns, name, DecodePodSpec(meta, doc["spec"], "")};
    } else if (api == "apps/v1" && kind == "Deployment") {
      CheckName(name, "metadata.name");
      const YAML::Node spec = doc["spec"];
      if (!spec || !spec.IsMap())
        throw FieldError{"spec", "required"};
      DeploymentObj dep{ns, name, Int(spec["replicas"], "spec.replicas", 1, 0, 100), {}};
      const YAML::Node tmpl = spec["template"];
      if (!tmpl || !tmpl.IsMap())
        throw FieldError{"spec.template", "required"};
      dep.spec = DecodePodSpec(tmpl["metadata"], tmpl["spec"], "spec.template");
      Labels sel = StrMap(spec["selector"]["matchLabels"], "spec.selector.matchLabels");
      for (const auto& [k, v] : sel) {
        auto it = dep.spec.labels.find(k);
        if (it == dep.spec.labels.end() || it->second != v)
          throw FieldError{"spec.selector.matchLabels." + k,
                           "does not match spec.template.metadata.labels"};
      }
      d.object = std::move(dep);
    } else if (api == "v1" && kind == "Service") {
      CheckName(name, "metadata.name");
      ServiceRec svc;
      svc.ns = ns;
      svc.name = name;
      svc.labels = StrMap(meta["labels"], "metadata.labels");
      d.object = ServiceObj{DecodeService(doc, svc)};
    } else if (api == "sluice.io/v1" && kind == "ExternalHost") {
      ExternalHostRec h;
      h.name = name;
      const YAML::Node spec = doc["spec"];
      if (spec && !spec.IsMap())
        throw FieldError{"spec", "must be a map"};
      h.hostnames = StrList(spec ? spec["hostnames"] : YAML::Node(), "spec.hostnames");
      if (h.hostnames.empty())
        h.hostnames.push_back(name);
      h.http_port = Int(spec ? spec["httpPort"] : YAML::Node(), "spec.httpPort", 80, 1, 65535);
      h.https_port = Int(spec ? spec["httpsPort"] : YAML::Node(), "spec.httpsPort", 443, 1, 65535);
      h.redirect_https = Bool(spec ? spec["redirectHttps"] : YAML::Node(), "spec.redirectHttps");
      YAML::Emitter e;
      e << spec;
      h.spec_hash = std::to_string(std::hash<std::string>{}(e.c_str()));
      d.object = ExternalHostObj{h};
    } else if (IsIstioApi(api) ||
               (api == "v1" && kind == "ConfigMap" && ns == "istio-system" && name == "istio") ||
               (api == "v1" && kind == "Secret")) {
      // The `istio` ConfigMap is the mesh config istiod reads: the control plane's too. A
      // Secret may be a Gateway's credentialName: the control plane serves it over SDS.
      d.object = IstioObj{kind, ns, name, text, api};
    } else if (api == "v1" && (kind == "ServiceAccount" || kind == "ConfigMap")) {
      d.object = IgnoredObj{kind, ns, name};
    } else {
      out.warnings.push_back(where + ": kind " + kind + " (apiVersion " + api +
                             ") is not something the local cluster runs; skipped");
      return;
    }
    out.documents.push_back(std::move(d));
  } catch (const FieldError& e) {
    out.errors.push_back(where + ": " + e.field + ": " + e.what);
  } catch (const YAML::Exception& e) {
    out.errors.push_back(where + ": " + e.what());
  }
}

}  // namespace

void DecodeText(const std::string& text, const std::string& file, const std::string& default_ns,
                ManifestSet& out) {
  auto docs = SplitDocuments(text);
  for (std::size_t i = 0; i < docs.size(); ++i)
    if (!Blank(docs[i]))
      DecodeDocument(docs[i], file, static_cast<int>(i) + 1, default_ns, out);
}

ManifestSet LoadManifests(const std::vector<std::string>& paths, const std::string& default_ns) {
  ManifestSet out;
  std::vector<std::string> files;
  for (const auto& p : paths) {
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<std::string> found;
      for (auto it = fs::recursive_directory_iterator(p, ec); !ec && it != fs::end(it);
           it.increment(ec)) {
        auto ext = it->path().extension().string();
        if (it->is_regular_file() && (ext == ".yaml" || ext == ".yml"))
          found.push_back(it->path().string());
      }
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::exists(p, ec)) {
      files.push_back(p);
    } else {
      out.errors.push_back(p + ": no such file or directory");
    }
  }
  for (const auto& f : files) {
    std::ifstream in(f);
    if (!in) {
      out.errors.push_back(f + ": cannot read");
      continue;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    DecodeText(ss.str(), f, default_ns, out);
  }
  return out;
}

Result<std::pair<std::string, std::optional<std::string>>> ParseLabelArg(const std::string& arg) {
  auto valid_key = [](const std::string& k) {
    if (k.empty() || k.size() > 253)
      return false;
    for (char c : k)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ||
            c == '/'))
        return false;
    return true;
  };
  if (!arg.empty() && arg.back() == '-' && arg.find('=') == std::string::npos) {
    std::string k = arg.substr(0, arg.size() - 1);
    if (!valid_key(k))
      return Fail("label \"" + arg + "\": not a valid label key");
    return std::pair<std::string, std::optional<std::string>>{k, std::nullopt};
  }
  auto eq = arg.find('=');
  if (eq == std::string::npos)
    return Fail("label \"" + arg + "\": expected key=value or key-");
  std::string k = arg.substr(0, eq), v = arg.substr(eq + 1);
  if (!valid_key(k))
    return Fail("label \"" + arg + "\": not a valid label key");
  for (char c : v)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'))
      return Fail("label \"" + arg + "\": not a valid label value");
  return std::pair<std::string, std::optional<std::string>>{k, v};
}

}  // namespace sluice::local
