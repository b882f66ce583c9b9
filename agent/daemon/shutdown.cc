// Upgrade or uninstall on SIGTERM (shutdown.h).
#include "shutdown.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "cni_conf.h"

namespace sluice::agent {

Result<DaemonSetRef> DaemonSetRef::Parse(const std::string& text) {
  auto slash = text.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == text.size() ||
      text.find('/', slash + 1) != std::string::npos) {
    return Fail("--daemonset \"" + text + "\": expected NAMESPACE/NAME");
  }
  return DaemonSetRef{text.substr(0, slash), text.substr(slash + 1)};
}

StopDecision DecideStop(const DaemonSetRef& ref,
                        const Result<std::optional<nlohmann::json>>& lookup) {
  const std::string ds = "DaemonSet " + ref.ToString();
  if (!lookup && lookup.error().code == 401) {
    // The token is refused: the agent's service account was deleted, which only an
    // uninstall does (as Istio's CNI agent reads it).
    return {true, "the API server refuses the agent's token (401) looking up " + ds +
                      ": its service account is gone, an uninstall"};
  }
  if (!lookup) {
    return {false, "could not look up " + ds + " (" + lookup.error().message +
                       "); keeping the data plane, as for an upgrade"};
  }
  if (!lookup->has_value())
    return {true, ds + " is gone (404): an uninstall"};
  const nlohmann::json& obj = **lookup;
  const auto meta = obj.find("metadata");
  if (meta != obj.end() && meta->is_object()) {
    auto ts = meta->find("deletionTimestamp");
    if (ts != meta->end() && ts->is_string() && !ts->get<std::string>().empty()) {
      return {true, ds + " is being deleted (deletionTimestamp " + ts->get<std::string>() +
                        "): an uninstall"};
    }
  }
  return {false, ds + " is still there: an upgrade or a restart; the data plane stays"};
}

Result<void> Uninstall(const UninstallPlan& plan, std::vector<std::string>* log) {
  std::optional<Error> first;
  auto note = [&](const std::string& line) {
    spdlog::info("uninstall: {}", line);
    if (log)
      log->push_back(line);
  };
  auto failed = [&](const std::string& step, const Error& e) {
    spdlog::error("uninstall: {}: {}", step, e.message);
    if (log)
      log->push_back(step + ": " + e.message);
    if (!first)
      first = Error{step + ": " + e.message, e.code};
  };

  // 1. The conflist first: no new pod is handed to an agent that is going away.
  if (!plan.cni_conf_dir.empty()) {
    auto r = Unchain(plan.cni_conf_dir);
    if (!r) {
      failed("removing sluice-cni from " + plan.cni_conf_dir, r.error());
    } else {
      for (const auto& line : *r)
        note(line);
      if (r->empty())
        note("no configuration in " + plan.cni_conf_dir + " chained sluice-cni");
    }
  }

  // 2. Every pod out of the mesh: its enrolment and its tc programs.
  if (plan.dataplane != nullptr) {
    auto enrolled = plan.dataplane->Enrolled();
    if (!enrolled) {
      failed("listing enrolled pods", enrolled.error());
    } else {
      std::size_t n = 0;
      for (const auto& [cookie, info] : *enrolled) {
        if (auto r = plan.dataplane->Unenrol(cookie); !r)
          failed("unenrolling netns cookie " + std::to_string(cookie), r.error());
        else
          n++;
      }
      note("unenrolled " + std::to_string(n) + " pod(s)");
    }
    auto pods = plan.dataplane->Pods();
    if (pods) {
      std::size_t n = 0;
      for (const auto& [ifindex, stats] : *pods) {
        (void)stats;
        if (auto r = plan.dataplane->DetachPod(ifindex); !r)
          failed("detaching tc from ifindex " + std::to_string(ifindex), r.error());
        else
          n++;
      }
      note("detached the tc programs of " + std::to_string(n) + " pod interface(s)");
    }
  }

  // 3. The programs and every pin (links first: that detaches the cgroup hooks).
  if (!plan.pin_root.empty()) {
    if (auto r = Dataplane::Cleanup(plan.pin_root); !r)
      failed("removing the pins under " + plan.pin_root, r.error());
    else
      note("detached the programs and removed every pin under " + plan.pin_root);
  }

  // 4. The agent's record of its pods: a later install starts from the node as it is.
  if (!plan.state_file.empty()) {
    std::error_code ec;
    if (std::filesystem::remove(plan.state_file, ec))
      note("removed " + plan.state_file);
    else if (ec)
      failed("removing " + plan.state_file, Error{ec.message(), ec.value()});
  }
  if (first)
    return std::unexpected(*first);
  return {};
}

}  // namespace sluice::agent
