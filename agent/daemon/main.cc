// sluice-agent: Sluice's agent, in one of two roles.
//
//   sluice-agent [--role node] [--xds-address istiod.istio-system.svc:15010]
//                [--labels-file FILE] [--proxy-port 15001] [--admin-address 127.0.0.1:15000]
//   sluice-agent --role gateway --pod-name N --pod-namespace NS --pod-labels k=v,...
//
// node (one per node, a DaemonSet, replacing per-pod sidecars): loads (or adopts) the
// kernel data plane, follows its configuration over xDS (from istiod, or from
// `sluicectl xds serve` on a machine without Kubernetes — the same stream either way),
// keeps the kernel's services equal to it, enrols the pods the CNI plugin hands over
// according to their labels, and runs the L7 proxy inside each enrolled pod (one xDS
// stream per namespace with pods here). SIGTERM stops it cleanly; the kernel path keeps
// working while it is down, and a restart adopts everything and reopens the pods.
//
// gateway (the container of an ingress or egress gateway pod, in that pod's network
// namespace): asks xDS as a router with the pod's labels and serves the listeners it
// gets with the L7 proxy. No kernel data plane.
//
// This file parses the flags (flags.h) and blocks the signals; app.h wires the role's
// parts: the node's config fan-out (config_fanout.h), pod poller (pod_poller.h) and admin
// pages (admin_routes.h), the gateway role (gateway_role.h), the L7 process (l7_host.h).
#include <signal.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <utility>

#include "app.h"
#include "flags.h"

#ifndef SLUICE_VERSION
#define SLUICE_VERSION "unknown"
#endif

int main(int argc, char** argv) {
  CLI::App app{"sluice-agent: Sluice's node agent (kernel L4 data plane, enrolment, xDS)"};
  sluice::agent::AgentFlags flags;
  sluice::agent::AddFlags(app, flags);
  // The project version (CMakeLists.txt's project(VERSION)); the image test runs it.
  app.set_version_flag("--version", "sluice-agent " SLUICE_VERSION);
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::from_str(flags.log_level));

  // Signals are taken by sigwait, never by a handler on another thread.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  return sluice::agent::RunAgent(std::move(flags), sigs);
}
