#include "sluice/cni/plugin.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>

#include "agent_down.h"
#include "prev_result.h"
#include "sluice/cni/protocol.h"

namespace sluice::cni {
namespace {

using ojson = nlohmann::ordered_json;  // keeps prevResult's key order when echoing it

constexpr const char* kErrorVersion = "1.0.0";

PluginOutput ErrorOut(const std::string& version, int code, std::string msg,
                      std::string details = {}) {
  ojson j;
  j["cniVersion"] = version.empty() ? kErrorVersion : version;
  j["code"] = code;
  j["msg"] = msg;
  if (!details.empty())
    j["details"] = details;
  PluginOutput out;
  out.exit_status = 1;
  out.stdout_text = j.dump(-1, ' ', false, ojson::error_handler_t::replace) + "\n";
  out.log = "sluice-cni: error " + std::to_string(code) + ": " + msg +
            (details.empty() ? "" : " (" + details + ")");
  return out;
}

bool IsSupported(std::string_view v) {
  for (const char* s : kSupportedVersions) {
    if (v == s)
      return true;
  }
  return false;
}

// "0.4.0" -> {0,4,0}; anything else -> nullopt.
std::optional<std::array<int, 3>> ParseSemver(std::string_view v) {
  std::array<int, 3> out{};
  std::size_t i = 0;
  for (int part = 0; part < 3; ++part) {
    if (i >= v.size() || v[i] < '0' || v[i] > '9')
      return std::nullopt;
    int n = 0;
    while (i < v.size() && v[i] >= '0' && v[i] <= '9')
      n = n * 10 + (v[i++] - '0');
    out[part] = n;
    if (part < 2) {
      if (i >= v.size() || v[i] != '.')
        return std::nullopt;
      ++i;
    }
  }
  if (i != v.size())
    return std::nullopt;
  return out;
}

std::string Get(const std::map<std::string, std::string>& env, const char* key) {
  auto it = env.find(key);
  return it == env.end() ? std::string() : it->second;
}

// CNI_ARGS: "K1=V1;K2=V2". Fails on a pair without '='.
std::optional<std::map<std::string, std::string>> ParseCniArgs(std::string_view args,
                                                               std::string* bad) {
  std::map<std::string, std::string> out;
  while (!args.empty()) {
    auto semi = args.find(';');
    std::string_view pair = args.substr(0, semi);
    args = semi == std::string_view::npos ? std::string_view() : args.substr(semi + 1);
    if (pair.empty())
      continue;
    auto eq = pair.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      *bad = std::string(pair);
      return std::nullopt;
    }
    out[std::string(pair.substr(0, eq))] = std::string(pair.substr(eq + 1));
  }
  return out;
}

// RunPlugin's work; `note` gets a line for the log that comes before the outcome's.
PluginOutput Run(const std::map<std::string, std::string>& env, const std::string& stdin_text,
                 std::string* note) {
  const std::string command = Get(env, "CNI_COMMAND");
  if (command.empty()) {
    return ErrorOut("", codes::kInvalidEnvironment, "CNI_COMMAND is not set");
  }
  if (command == "VERSION") {
    ojson j;
    j["cniVersion"] = "1.0.0";
    j["supportedVersions"] = ojson::array();
    for (const char* v : kSupportedVersions)
      j["supportedVersions"].push_back(v);
    return PluginOutput{0, j.dump() + "\n", ""};
  }
  Operation op;
  if (command == "ADD") {
    op = Operation::kAdd;
  } else if (command == "DEL") {
    op = Operation::kDel;
  } else if (command == "CHECK") {
    op = Operation::kCheck;
  } else {
    return ErrorOut("", codes::kInvalidEnvironment,
                    "CNI_COMMAND: unknown command \"" + command + "\"",
                    "sluice-cni supports ADD, DEL, CHECK and VERSION");
  }

  // The network configuration on stdin. Past the cap the plugin has not read the whole
  // configuration: the spec's "failed to read network config bytes from stdin" (5).
  if (stdin_text.size() > kMaxNetworkConfigBytes) {
    return ErrorOut("", codes::kIoFailure,
                    "network configuration on stdin is over sluice-cni's limit of " +
                        std::to_string(kMaxNetworkConfigBytes) + " bytes (" +
                        std::to_string(kMaxNetworkConfigBytes >> 20) + " MiB)",
                    "sluice-cni stopped reading at the limit; a configuration with its "
                    "prevResult is a few kilobytes");
  }
  ojson conf = ojson::parse(stdin_text, nullptr, /*allow_exceptions=*/false);
  if (conf.is_discarded() || !conf.is_object()) {
    return ErrorOut("", codes::kDecodeFailure,
                    "network configuration on stdin is not a JSON object");
  }
  auto version_it = conf.find("cniVersion");
  if (version_it == conf.end() || !version_it->is_string()) {
    return ErrorOut("", codes::kInvalidNetworkConfig,
                    "network configuration: field \"cniVersion\" is missing or not a string");
  }
  const std::string version = version_it->get<std::string>();
  if (!IsSupported(version)) {
    std::string list;
    for (const char* v : kSupportedVersions)
      list += std::string(list.empty() ? "" : ", ") + v;
    return ErrorOut("", codes::kIncompatibleVersion,
                    "network configuration: cniVersion \"" + version + "\" is not supported",
                    "sluice-cni supports " + list);
  }
  if (op == Operation::kCheck) {
    auto sv = ParseSemver(version);
    if (!sv || *sv < std::array<int, 3>{0, 4, 0}) {
      return ErrorOut(version, codes::kIncompatibleVersion,
                      "CHECK needs cniVersion 0.4.0 or later, the configuration says " + version);
    }
  }

  // Plugin-specific fields.
  std::string socket_path = kDefaultAgentSocket;
  bool fail_open = false;
  std::chrono::milliseconds timeout{10000};
  if (auto it = conf.find("agentSocket"); it != conf.end()) {
    if (!it->is_string() || it->get<std::string>().empty()) {
      return ErrorOut(version, codes::kInvalidNetworkConfig,
                      "network configuration: field \"agentSocket\" must be a non-empty string");
    }
    socket_path = it->get<std::string>();
  }
  if (auto it = conf.find("failOpen"); it != conf.end()) {
    if (!it->is_boolean()) {
      return ErrorOut(version, codes::kInvalidNetworkConfig,
                      "network configuration: field \"failOpen\" must be true or false");
    }
    fail_open = it->get<bool>();
  }
  AgentDownPolicy agent_down;
  if (auto it = conf.find("excludeNamespaces"); it != conf.end()) {
    bool ok = it->is_array();
    std::vector<std::string> names;
    for (const auto& n : ok ? *it : ojson::array()) {
      if (!n.is_string() || n.get<std::string>().empty()) {
        ok = false;
        break;
      }
      names.push_back(n.get<std::string>());
    }
    if (!ok) {
      return ErrorOut(version, codes::kInvalidNetworkConfig,
                      "network configuration: field \"excludeNamespaces\" must be a list of "
                      "namespace names");
    }
    agent_down.exclude_namespaces = std::move(names);
  }
  if (auto it = conf.find("kubeconfig"); it != conf.end()) {
    if (!it->is_string()) {
      return ErrorOut(version, codes::kInvalidNetworkConfig,
                      "network configuration: field \"kubeconfig\" must be a path");
    }
    agent_down.kubeconfig = it->get<std::string>();
  }
  if (auto it = conf.find("agentTimeoutMs"); it != conf.end()) {
    if (!it->is_number_integer() || it->get<long long>() <= 0) {
      return ErrorOut(version, codes::kInvalidNetworkConfig,
                      "network configuration: field \"agentTimeoutMs\" must be a positive "
                      "integer");
    }
    timeout = std::chrono::milliseconds(it->get<long long>());
  }

  // prevResult: required for ADD and CHECK (a chained plugin runs after the one that made
  // the interface); optional for DEL, where the runtime may not have it. It is checked
  // before its addresses are used or it is handed back. A DEL does not fail on a bad one
  // (that would only block the sandbox's removal): it goes on without it.
  const ojson* prev = nullptr;
  if (auto it = conf.find("prevResult"); it != conf.end() && !it->is_null()) {
    std::string problem =
        it->is_object() ? PrevResultProblem(*it) : "prevResult: must be an object";
    if (problem.empty()) {
      prev = &*it;
    } else if (op == Operation::kDel) {
      *note = "sluice-cni: DEL: ignoring prevResult: " + problem;
    } else {
      return ErrorOut(version, codes::kInvalidNetworkConfig, "network configuration: " + problem);
    }
  }
  if (!prev && op != Operation::kDel) {
    return ErrorOut(version, codes::kInvalidNetworkConfig,
                    "network configuration: field \"prevResult\" is missing",
                    "sluice-cni is a chained plugin: list it after the plugin that creates the "
                    "pod's interface (e.g. bridge, ptp) in a .conflist");
  }

  // The runtime environment.
  CniRequest req;
  req.op = op;
  req.cni_version = version;
  req.container_id = Get(env, "CNI_CONTAINERID");
  req.netns = Get(env, "CNI_NETNS");
  req.ifname = Get(env, "CNI_IFNAME");
  if (req.container_id.empty()) {
    return ErrorOut(version, codes::kInvalidEnvironment, "CNI_CONTAINERID is not set");
  }
  if (req.ifname.empty()) {
    return ErrorOut(version, codes::kInvalidEnvironment, "CNI_IFNAME is not set");
  }
  if (req.netns.empty() && op != Operation::kDel) {
    return ErrorOut(version, codes::kInvalidEnvironment, "CNI_NETNS is not set");
  }
  std::string bad_pair;
  auto args = ParseCniArgs(Get(env, "CNI_ARGS"), &bad_pair);
  if (!args) {
    return ErrorOut(version, codes::kInvalidEnvironment,
                    "CNI_ARGS: \"" + bad_pair + "\" is not KEY=VALUE");
  }
  req.pod_name = (*args)["K8S_POD_NAME"];
  req.pod_namespace = (*args)["K8S_POD_NAMESPACE"];
  req.pod_uid = (*args)["K8S_POD_UID"];
  if (prev) {
    // PrevResultProblem() made sure: an array of objects, each with a CIDR "address".
    if (auto ips = prev->find("ips"); ips != prev->end() && ips->is_array()) {
      for (const auto& ip : *ips)
        req.ips.push_back(ip.at("address").get<std::string>());
    }
  }

  auto reply = CallAgent(socket_path, req, timeout);
  PluginOutput ok;
  if (op == Operation::kAdd)
    ok.stdout_text = prev->dump(-1, ' ', false, ojson::error_handler_t::replace) + "\n";
  if (!reply) {
    // Error::code != 0: the agent could not be reached or did not answer in time.
    const bool unreachable = reply.error().code != 0;
    if (unreachable && op == Operation::kDel) {
      // Nothing to undo that the agent would not reconcile on its own restart.
      ok.log = "sluice-cni: DEL: " + reply.error().message + "; agent will reconcile";
      return ok;
    }
    if (unreachable && fail_open) {
      ok.log = "sluice-cni: " + std::string(OperationName(op)) + ": " + reply.error().message +
               "; failOpen is set, pod continues without the mesh";
      return ok;
    }
    if (unreachable) {
      // Only mesh pods need the agent (agent_down.h).
      auto verdict = DecideAgentDown(agent_down, req.pod_namespace, req.pod_name);
      if (verdict.pass) {
        ok.log = "sluice-cni: " + std::string(OperationName(op)) + ": " + reply.error().message +
                 "; " + verdict.why + ": pod continues without the mesh";
        return ok;
      }
      return ErrorOut(version, codes::kTryAgainLater, "sluice agent is unreachable: " + verdict.why,
                      reply.error().message);
    }
    return ErrorOut(version, codes::kAgentProtocol, "bad exchange with the sluice agent",
                    reply.error().message);
  }
  if (!reply->ok) {
    return ErrorOut(version, reply->code, reply->msg, reply->details);
  }
  ok.log = "sluice-cni: " + std::string(OperationName(op)) + " " + req.pod_namespace + "/" +
           req.pod_name + ": " + (reply->enrolled ? "enrolled" : "not enrolled") +
           (reply->msg.empty() ? "" : " (" + reply->msg + ")");
  return ok;
}

}  // namespace

PluginOutput RunPlugin(const std::map<std::string, std::string>& env,
                       const std::string& stdin_text) {
  std::string note;
  PluginOutput out = Run(env, stdin_text, &note);
  if (!note.empty())
    out.log = note + (out.log.empty() ? "" : "\n" + out.log);
  return out;
}

PluginOutput StdinReadFailed(int err) {
  return ErrorOut(
      "", codes::kIoFailure,
      std::string("reading the network configuration from stdin: ") + std::strerror(err));
}

}  // namespace sluice::cni
