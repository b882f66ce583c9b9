// The Istio YAML loader's front: finds the config files, cuts each into documents
// (keeping a broken document's neighbours), parses them and hands each to the decoder of
// its apiVersion and kind (decode.h, one file per kind); an unknown kind is a warning.
// Validate() (validate.cc) then checks what spans resources.
#include "sluice/istio/loader.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include "api_fields.h"
#include "loader/decode.h"
#include "yaml_field.h"

namespace sluice::istio {
namespace {

namespace fs = std::filesystem;
using detail::DecodeDeployment;
using detail::DecodeDestinationRule;
using detail::DecodeEndpoints;
using detail::DecodeEndpointSlice;
using detail::DecodeGateway;
using detail::DecodeMeshConfigMap;
using detail::DecodeMeta;
using detail::DecodePod;
using detail::DecodeService;
using detail::DecodeServiceEntry;
using detail::DecodeSidecar;
using detail::DecodeTelemetry;
using detail::DecodeVirtualService;
using detail::Field;
using detail::FieldErrors;
using detail::OneOf;

constexpr const char* kIstioNetworkingVersions[] = {
    "networking.istio.io/v1alpha3", "networking.istio.io/v1beta1", "networking.istio.io/v1"};
constexpr const char* kSecurityVersions[] = {"security.istio.io/v1beta1", "security.istio.io/v1"};
constexpr const char* kTelemetryVersions[] = {"telemetry.istio.io/v1alpha1",
                                              "telemetry.istio.io/v1"};

// One YAML document cut out of a file, with the line it starts on (1-based), so that
// parse errors point at the file's own line numbers.
struct RawDocument {
  std::string text;
  int first_line = 1;
};

bool IsSeparator(std::string_view line, std::string_view marker) {
  if (line.substr(0, 3) != marker)
    return false;
  return line.size() == 3 || line[3] == ' ' || line[3] == '\t' || line[3] == '#' || line[3] == '\r';
}

// Splits on "---" / "..." lines ourselves: yaml-cpp's LoadAll gives up on the whole
// stream at the first broken document, and we must keep its neighbours.
std::vector<RawDocument> SplitDocuments(std::string_view text) {
  std::vector<RawDocument> docs(1);
  int line_no = 0;
  std::size_t pos = 0;
  bool ended = false;  // after "...", text up to the next "---" is outside any document
  while (pos < text.size()) {
    std::size_t nl = text.find('\n', pos);
    std::string_view line =
        text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() : nl + 1;
    ++line_no;
    if (IsSeparator(line, "---")) {
      docs.push_back(RawDocument{"", line_no + 1});
      ended = false;
      // "--- {inline}" keeps the content after the marker on the same line.
      std::string_view rest = line.substr(3);
      if (rest.find_first_not_of(" \t\r") != std::string_view::npos && rest[0] != '#') {
        docs.back().text.append(rest).append("\n");
        docs.back().first_line = line_no;
      }
      continue;
    }
    if (IsSeparator(line, "...")) {
      ended = true;
      continue;
    }
    if (ended)
      continue;
    docs.back().text.append(line).append("\n");
  }
  return docs;
}

bool IsBlank(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    auto p = line.find_first_not_of(" \t\r");
    if (p != std::string::npos && line[p] != '#' && line.substr(p) != "%YAML 1.2" &&
        line.substr(p, 5) != "%YAML") {
      return false;
    }
  }
  return true;
}

void DecodeDocument(const YAML::Node& root, const Origin& origin, LoadResult& out) {
  FieldErrors errors;
  Field doc(root, "", &errors);
  const std::string where = origin.file + ": document " + std::to_string(origin.document);
  if (!root.IsMap()) {
    out.errors.push_back(where + ": must be a mapping with apiVersion and kind");
    return;
  }
  auto kind = doc["kind"].Str();
  auto api = doc["apiVersion"].Str();
  if (errors.failed()) {
    out.errors.push_back(where + ": " + *errors.first);
    return;
  }
  if (!kind || kind->empty()) {
    out.errors.push_back(where + ": kind: required");
    return;
  }
  if (!api || api->empty()) {
    out.errors.push_back(where + " (" + *kind + "): apiVersion: required");
    return;
  }
  const bool istio = OneOf(*api, kIstioNetworkingVersions);
  const bool authz = *kind == "AuthorizationPolicy" && api->starts_with("security.istio.io/");
  // Before any field is read: a misspelled field explains the errors that would follow
  // (a VirtualService whose `htttp:` leaves it without routes).
  if (istio || (authz && OneOf(*api, kSecurityVersions)))
    detail::CheckKnownFields(doc, *kind);
  // Service and Namespace names become DNS labels (name.ns.svc.cluster.local).
  Meta meta = DecodeMeta(doc, origin, *kind == "Service" || *kind == "Namespace");
  const std::string described = origin.Describe(*kind, meta.ns, meta.name);
  auto report = [&] { out.errors.push_back(described + ": " + *errors.first); };
  // A refused AuthorizationPolicy must not fail open: what can be read of it stays, marked
  // rejected, and the translator denies for the workloads it selects (authz.cc).
  auto reject_policy = [&](const std::string& reason) {
    out.errors.push_back(described + ": " + reason +
                         " (refused; the workloads it selects fail closed)");
    Meta kept = meta;
    if (kept.name.empty())
      kept.name = "<unnamed>";
    out.config.authorization_policies.push_back(
        detail::RejectedAuthorizationPolicy(root, kept, reason));
  };
  if (authz) {
    if (!OneOf(*api, kSecurityVersions)) {
      return reject_policy("apiVersion: " + *api +
                           " is not a version of AuthorizationPolicy that Sluice reads "
                           "(security.istio.io/v1beta1, v1)");
    }
    if (errors.failed())
      return reject_policy(*errors.first);
    auto p = detail::DecodeAuthorizationPolicy(doc, meta);
    if (errors.failed())
      return reject_policy(*errors.first);
    out.config.authorization_policies.push_back(std::move(p));
    return;
  }
  if (errors.failed())
    return report();

  auto wrong_version = [&](const std::string& versions) {
    out.errors.push_back(described + ": apiVersion: " + *api + " is not a version of " + *kind +
                         " that Sluice reads (" + versions + ")");
  };
  Config& c = out.config;
  const bool core = *api == "v1";
  const std::string istio_versions = "networking.istio.io/v1alpha3, v1beta1, v1";

  if (*kind == "Namespace" && core) {
    c.namespaces.push_back(Namespace{meta});
    c.namespaces.back().meta.ns = "";
  } else if (*kind == "Service" && core) {
    auto s = DecodeService(doc, meta);
    if (errors.failed())
      return report();
    c.services.push_back(std::move(s));
  } else if (*kind == "Pod" && core) {
    auto w = DecodePod(doc, meta);
    if (errors.failed())
      return report();
    c.workloads.push_back(std::move(w));
  } else if (*kind == "Deployment" && *api == "apps/v1") {
    auto w = DecodeDeployment(doc, meta);
    if (errors.failed())
      return report();
    c.workloads.push_back(std::move(w));
  } else if (*kind == "Endpoints" && core) {
    auto g = DecodeEndpoints(doc, meta);
    if (errors.failed())
      return report();
    c.endpoint_groups.push_back(std::move(g));
  } else if (*kind == "EndpointSlice" && *api == "discovery.k8s.io/v1") {
    auto g = DecodeEndpointSlice(doc, meta);
    if (errors.failed())
      return report();
    c.endpoint_groups.push_back(std::move(g));
  } else if (*kind == "ConfigMap" && core) {
    if (meta.name != "istio") {
      out.warnings.push_back(described +
                             ": only the ConfigMap named \"istio\" (mesh config) is "
                             "read; skipped");
      return;
    }
    MeshConfig mesh = c.mesh;
    DecodeMeshConfigMap(doc, mesh, errors);
    if (errors.failed())
      return report();
    c.mesh = mesh;
    c.mesh_set = true;
  } else if (*kind == "Gateway" || *kind == "VirtualService" || *kind == "DestinationRule" ||
             *kind == "ServiceEntry" || *kind == "Sidecar") {
    if (!api->starts_with("networking.istio.io/")) {
      // gateway.networking.k8s.io Gateway and friends are a different API.
      out.warnings.push_back(described + ": kind " + *kind + " of " + *api +
                             " is not read by Sluice; skipped");
      return;
    }
    if (!istio)
      return wrong_version(istio_versions);
    if (*kind == "Gateway") {
      auto g = DecodeGateway(doc, meta);
      if (errors.failed())
        return report();
      c.gateways.push_back(std::move(g));
    } else if (*kind == "VirtualService") {
      auto v = DecodeVirtualService(doc, meta);
      if (errors.failed())
        return report();
      c.virtual_services.push_back(std::move(v));
    } else if (*kind == "DestinationRule") {
      auto d = DecodeDestinationRule(doc, meta);
      if (errors.failed())
        return report();
      c.destination_rules.push_back(std::move(d));
    } else if (*kind == "ServiceEntry") {
      auto s = DecodeServiceEntry(doc, meta);
      if (errors.failed())
        return report();
      c.service_entries.push_back(std::move(s));
    } else {
      auto sc = DecodeSidecar(doc, meta);
      if (errors.failed())
        return report();
      c.sidecars.push_back(std::move(sc));
    }
  } else if (*kind == "Secret" && core) {
    auto secret = detail::DecodeSecret(doc, meta);
    if (errors.failed())
      return report();
    c.secrets.push_back(std::move(secret));
  } else if (*kind == "RequestAuthentication" && api->starts_with("security.istio.io/")) {
    // Its JWT rules would feed request.auth.* of AuthorizationPolicy; ignoring it would
    // change what a policy means, so it is refused, never skipped.
    out.errors.push_back(described +
                         ": RequestAuthentication is not supported: Sluice has no JWT "
                         "authentication (jwt_authn); refused");
  } else if (*kind == "Telemetry") {
    if (!OneOf(*api, kTelemetryVersions))
      return wrong_version("telemetry.istio.io/v1alpha1, v1");
    auto t = DecodeTelemetry(doc, meta);
    if (errors.failed())
      return report();
    c.telemetries.push_back(std::move(t));
  } else {
    out.warnings.push_back(described + ": kind " + *kind + " (" + *api +
                           ") is not used by Sluice; skipped");
  }
}

bool IsConfigFile(const fs::path& p) {
  auto ext = p.extension().string();
  return ext == ".yaml" || ext == ".yml" || ext == ".json";
}

}  // namespace

std::string Origin::Describe(const std::string& kind, const std::string& ns,
                             const std::string& name) const {
  std::string s = file + ": document " + std::to_string(document) + " (" + kind + " ";
  const std::string shown = name.empty() ? "<unnamed>" : name;
  if (kind == "Namespace")
    return s + shown + ")";
  return s + ns + "/" + shown + ")";
}

void LoadText(std::string_view text, const std::string& file, LoadResult& out) {
  auto docs = SplitDocuments(text);
  int index = 0;
  for (const auto& raw : docs) {
    if (IsBlank(raw.text))
      continue;
    ++index;
    Origin origin{file, index};
    YAML::Node root;
    try {
      root = YAML::Load(raw.text);
    } catch (const YAML::Exception& e) {
      std::string msg = e.msg;
      std::string where = file + ": document " + std::to_string(index);
      if (!e.mark.is_null()) {
        where += ": line " + std::to_string(raw.first_line + e.mark.line) + ", column " +
                 std::to_string(e.mark.column + 1);
      }
      out.errors.push_back(where + ": not valid YAML: " + msg);
      continue;
    }
    DecodeDocument(root, origin, out);
  }
}

std::vector<std::string> ListConfigFiles(const std::vector<std::string>& paths,
                                         std::vector<std::string>* errors) {
  std::vector<std::string> files;
  for (const auto& p : paths) {
    std::error_code ec;
    auto status = fs::status(p, ec);
    if (ec || !fs::exists(status)) {
      if (errors)
        errors->push_back(p + ": no such file or directory");
      continue;
    }
    if (fs::is_directory(status)) {
      std::vector<std::string> found;
      for (auto it = fs::recursive_directory_iterator(
               p, fs::directory_options::follow_directory_symlink, ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        // Skip hidden files and dirs (editor swap files, Kubernetes' ..data symlinks).
        if (it->path().filename().string().starts_with(".")) {
          if (it->is_directory())
            it.disable_recursion_pending();
          continue;
        }
        if (it->is_regular_file() && IsConfigFile(it->path()))
          found.push_back(it->path().string());
      }
      if (ec && errors)
        errors->push_back(p + ": " + ec.message());
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else {
      files.push_back(p);
    }
  }
  return files;
}

LoadResult LoadPaths(const std::vector<std::string>& paths) {
  LoadResult out;
  for (const auto& file : ListConfigFiles(paths, &out.errors)) {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
      out.errors.push_back(file + ": cannot read: " + std::strerror(errno));
      continue;
    }
    std::stringstream buf;
    buf << in.rdbuf();
    LoadText(buf.str(), file, out);
  }
  Validate(out);
  return out;
}

}  // namespace sluice::istio
