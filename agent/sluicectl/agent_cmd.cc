// `sluicectl agent …`: what a running sluice-agent reports on its admin endpoint
// (127.0.0.1 only): the pods it knows and whether they are enrolled, its metrics,
// readiness and config dump.
#include <fmt/format.h>

#include <iostream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "cli.h"
#include "commands.h"
#include "sluice/inspect/admin_client.h"

namespace sluice::ctl {
namespace {

// GET path on the admin endpoint (HOST:PORT or unix:PATH); the body, or exit 1 naming
// what failed.
std::string AdminGet(const std::string& address, const std::string& path) {
  auto body = inspect::AdminGet(address, path);
  if (!body)
    Die("", body.error().message + " (is the agent running? --admin sets the address)");
  return *body;
}

}  // namespace

void AddAgentCommands(CLI::App& app) {
  auto admin = std::make_shared<std::string>("127.0.0.1:15000");
  auto* agent = app.add_subcommand("agent", "Ask a running sluice-agent (admin endpoint)");
  agent->require_subcommand(1);
  agent->add_option("--admin", *admin, "the agent's admin address: HOST:PORT or unix:PATH")
      ->capture_default_str();

  agent->add_subcommand("pods", "Pods the agent knows, and whether they are enrolled")
      ->callback([admin] {
        auto pods = nlohmann::json::parse(AdminGet(*admin, "/pods"), nullptr, false);
        if (!pods.is_array())
          Die("", "unexpected /pods answer");
        std::cout << fmt::format("{:<16} {:<28} {:<18} {:<9} {:<10} {:<12} {:<12} {}\n",
                                 "NAMESPACE", "POD", "IP", "ENROLLED", "COOKIE", "INBOUND",
                                 "POLICY", "REASON");
        for (const auto& p : pods) {
          std::string ip = p["ips"].empty() ? "-" : p["ips"][0].get<std::string>();
          // The ports the kernel steers to the pod's inbound proxy listener ("*": every
          // other port). Without a listener to take them: "(refused)" for a port whose
          // policy only the proxy enforces, "(app)" for one the application gets.
          std::string inbound;
          if (p.contains("l7"))
            for (const auto& in : p["l7"].value("inbound", nlohmann::json::array())) {
              const int port = in.value("port", 0);
              inbound += (inbound.empty() ? "" : ",") +
                         (port == 0 ? std::string("*") : std::to_string(port));
              if (!in.value("serving", true))
                inbound += in.value("guard", false) ? "(refused)" : "(app)";
            }
          // The ports whose L4 policy the kernel enforces (each port once).
          std::set<int> policy_ports;
          if (p.contains("l7"))
            for (const auto& pol : p["l7"].value("policy", nlohmann::json::array()))
              policy_ports.insert(pol.value("port", 0));
          std::string policy;
          for (int port : policy_ports)
            policy += (policy.empty() ? "" : ",") + std::to_string(port);
          std::cout << fmt::format("{:<16} {:<28} {:<18} {:<9} {:<10} {:<12} {:<12} {}\n",
                                   p["namespace"].get<std::string>(), p["name"].get<std::string>(),
                                   ip, p["enrolled"].get<bool>() ? "yes" : "no",
                                   p["cookie"].get<uint64_t>(), inbound.empty() ? "-" : inbound,
                                   policy.empty() ? "-" : policy, p["reason"].get<std::string>());
        }
      });
  agent->add_subcommand("metrics", "Prometheus metrics")->callback([admin] {
    std::cout << AdminGet(*admin, "/metrics");
  });
  agent->add_subcommand("ready", "Exit 0 when the agent has applied a configuration")
      ->callback([admin] { std::cout << AdminGet(*admin, "/ready"); });
  auto ns = std::make_shared<std::string>();
  auto* dump = agent->add_subcommand("config-dump",
                                     "The Envoy resources in force and the kernel plan (JSON)");
  dump->add_option("-n,--namespace", *ns, "only what the L7 proxy uses for pods of this namespace");
  dump->callback([admin, ns] {
    std::cout << AdminGet(*admin, ns->empty() ? "/config_dump" : "/config_dump?namespace=" + *ns);
  });
}

}  // namespace sluice::ctl
