// sluice-agent's command line: every flag, its default and its help text, in one struct.
// main() parses it; RunAgent() (app.h) wires the parts from it.
#pragma once

#include <string>

#include "cni_conf.h"
#include "cni_server.h"
#include "gateway_role.h"
#include "l7_host.h"
#include "node_agent.h"
#include "sluice/kube/client.h"
#include "sluice/loader/dataplane.h"
#include "sluice/xds/ads_client.h"
#include "sluice/xds/node.h"

namespace CLI {
class App;
}

namespace sluice::agent {

struct AgentFlags {
  AgentFlags();  // the defaults --help shows

  std::string role = "node";  // node, gateway or l7
  xds::AdsClientOptions ads;
  xds::NodeIdentity id;  // the node's (node role)
  std::string node_ip = "127.0.0.1";
  DataplaneOptions dataplane;
  cni::CniServerOptions cni;
  NodeAgentOptions node;
  std::string labels_file, admin_address = "127.0.0.1:15000";
  // Labels from the API server: in-cluster credentials (--kubernetes), a kubeconfig, or
  // a server URL with token and CA files.
  bool kubernetes = false;
  std::string kubeconfig, kube_server, kube_token_file, kube_ca_file;
  std::string excluded_namespaces = "kube-system";  // comma list
  // With the API server and TLS to istiod: each view's stream asks as its pods' service
  // account with a token the API server issues for it (istiod's XDS identity check).
  bool view_tokens = true;
  std::string view_token_audience = "istio-ca";
  // Where the /proc scan for pods that ran before the agent looks (the host's /proc in a
  // container) and where the runtime names network namespaces.
  std::string proc_root = "/proc";
  std::string netns_dir = "/var/run/netns";
  std::string log_level = "info";
  std::string access_log = "-";
  int drain_seconds = 5;
  bool kernel_access_log = true;
  bool kernel_tcp_metrics = true;  // Istio's TCP metrics of the kernel path (sockops)
  std::string kernel_fallback;     // kernel features to do without (kernel_features.h)
  std::string config_dir;
  GatewayOptions gateway;  // the gateway role's own flags (--pod-*, --workers)
  bool ns_streams = true;
  L7HostOptions l7;  // --role l7 (set by the node agent)
  // The node's lifecycle (issue 19): the agent's own sluice-cni conflist entry
  // (--cni-conf-dir; empty: off) and, on SIGTERM, its DaemonSet ("NS/NAME") to tell an
  // upgrade from an uninstall (empty: always keep the data plane).
  CniConfOptions cni_conf;
  std::string daemonset;
};

// Adds every flag to `app`, bound to `f` (whose values are the defaults shown).
void AddFlags(CLI::App& app, AgentFlags& f);

}  // namespace sluice::agent
