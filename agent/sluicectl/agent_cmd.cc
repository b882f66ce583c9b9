// `sluicectl agent …`: what a running sluice-agent reports on its admin endpoint
// (127.0.0.1 only): the pods it knows and whether they are enrolled, its metrics,
// readiness and config dump.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "commands.h"

namespace sluice::ctl {
namespace {

[[noreturn]] void Die(const std::string& msg) {
  std::cerr << "sluicectl: " << msg << "\n";
  throw CLI::RuntimeError(1);
}

// GET http://127.0.0.1:PORT/path; returns the body, fails on anything but 200.
std::string AdminGet(const std::string& address, const std::string& path) {
  auto colon = address.rfind(':');
  if (colon == std::string::npos)
    Die("--admin '" + address + "': expected 127.0.0.1:PORT");
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(static_cast<uint16_t>(std::atoi(address.c_str() + colon + 1)));
  if (inet_pton(AF_INET, address.substr(0, colon).c_str(), &sin.sin_addr) != 1)
    Die("--admin '" + address + "': expected 127.0.0.1:PORT");
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0) {
    close(fd);
    Die("cannot reach sluice-agent's admin endpoint at " + address +
        " (is the agent running? --admin sets the address)");
  }
  const std::string req = "GET " + path + " HTTP/1.1\r\nHost: sluice-agent\r\n\r\n";
  std::string resp;
  if (write(fd, req.data(), req.size()) > 0) {
    char buf[65536];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0)
      resp.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  auto body = resp.find("\r\n\r\n");
  int status = resp.size() > 12 ? std::atoi(resp.c_str() + 9) : 0;
  std::string content = body == std::string::npos ? "" : resp.substr(body + 4);
  if (status != 200)
    Die(fmt::format("{}{}: HTTP {}: {}", address, path, status, content));
  return content;
}

}  // namespace

void AddAgentCommands(CLI::App& app) {
  auto admin = std::make_shared<std::string>("127.0.0.1:15000");
  auto* agent = app.add_subcommand("agent", "Ask a running sluice-agent (admin endpoint)");
  agent->require_subcommand(1);
  agent->add_option("--admin", *admin, "the agent's admin address")->capture_default_str();

  agent->add_subcommand("pods", "Pods the agent knows, and whether they are enrolled")
      ->callback([admin] {
        auto pods = nlohmann::json::parse(AdminGet(*admin, "/pods"), nullptr, false);
        if (!pods.is_array())
          Die("unexpected /pods answer");
        std::cout << fmt::format("{:<16} {:<28} {:<18} {:<9} {:<10} {}\n", "NAMESPACE", "POD", "IP",
                                 "ENROLLED", "COOKIE", "REASON");
        for (const auto& p : pods) {
          std::string ip = p["ips"].empty() ? "-" : p["ips"][0].get<std::string>();
          std::cout << fmt::format("{:<16} {:<28} {:<18} {:<9} {:<10} {}\n",
                                   p["namespace"].get<std::string>(), p["name"].get<std::string>(),
                                   ip, p["enrolled"].get<bool>() ? "yes" : "no",
                                   p["cookie"].get<uint64_t>(), p["reason"].get<std::string>());
        }
      });
  agent->add_subcommand("metrics", "Prometheus metrics")->callback([admin] {
    std::cout << AdminGet(*admin, "/metrics");
  });
  agent->add_subcommand("ready", "Exit 0 when the agent has applied a configuration")
      ->callback([admin] { std::cout << AdminGet(*admin, "/ready"); });
  agent->add_subcommand("config-dump", "The Envoy resources in force and the kernel plan (JSON)")
      ->callback([admin] { std::cout << AdminGet(*admin, "/config_dump"); });
}

}  // namespace sluice::ctl
