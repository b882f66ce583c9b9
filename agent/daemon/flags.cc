// sluice-agent's flags (flags.h).
#include "flags.h"

#include <CLI/CLI.hpp>

#include <map>
#include <string>

namespace sluice::agent {

AgentFlags::AgentFlags() {
  ads.server = "127.0.0.1:15010";
  id.pod_name = "sluice-agent";
  id.pod_namespace = "istio-system";
  node.proxy_port = 15001;
}

void AddFlags(CLI::App& app, AgentFlags& f) {
  app.add_option("--role", f.role,
                 "node (pods of this node) or gateway (l7: the node agent's own L7 process)")
      ->check(CLI::IsMember({"node", "gateway", "l7"}))
      ->capture_default_str();
  // Set by the node agent when it starts its L7 process (hidden from --help).
  app.add_option("--l7-socket-fd", f.l7.sock)->group("");
  app.add_option("--l7-agent-pid", f.l7.agent_pid)->group("");
  app.add_option("--l7-upstream-mark", f.l7.upstream_mark)->group("");
  app.add_option("--xds-address", f.ads.server,
                 "istiod (or sluicectl xds serve): host:port or unix:PATH")
      ->capture_default_str();
  app.add_option("--config-dir", f.config_dir,
                 "instead of istiod: translate the Istio/Kubernetes YAML in this directory "
                 "(watched) and serve it to this agent over its own xDS pipeline");
  app.add_flag("--xds-tls", f.ads.tls, "TLS to the xDS server (istiod's 15012)");
  app.add_option("--xds-ca", f.ads.ca_file, "CA bundle that signed the xDS server's certificate");
  app.add_option("--xds-server-name", f.ads.tls_server_name, "name to verify in its certificate");
  app.add_option("--xds-token", f.ads.token_file, "file with a bearer token (TLS only)");
  static const std::map<std::string, xds::XdsProtocol> kXdsProtocols{
      {"auto", xds::XdsProtocol::kAuto},
      {"delta", xds::XdsProtocol::kDelta},
      {"sotw", xds::XdsProtocol::kSotw}};
  app.add_option("--xds-protocol", f.ads.protocol,
                 "auto (default: Delta xDS, state of the world if the server has no Delta), "
                 "delta or sotw")
      ->transform(CLI::CheckedTransformer(kXdsProtocols))
      ->option_text("auto|delta|sotw");
  app.add_option("--node-ip", f.node_ip, "this node's address (xDS node ID)")
      ->capture_default_str();
  app.add_option("--node-name", f.id.node_name,
                 "Kubernetes node name (default: $NODE_NAME); with the API server, the agent "
                 "follows the pods scheduled to it");
  app.add_option("--cluster-id", f.id.cluster_id, "CLUSTER_ID metadata")->capture_default_str();
  app.add_option("--xds-namespace", f.id.pod_namespace,
                 "the namespace the node's own xDS stream asks as (NAMESPACE metadata; with "
                 "istiod's XDS identity check, the namespace of --xds-token's account)")
      ->capture_default_str();
  app.add_option("--xds-service-account", f.id.service_account,
                 "the service account the node's own xDS stream asks as (SERVICE_ACCOUNT "
                 "metadata; --xds-token's account)")
      ->capture_default_str();
  app.add_flag("!--no-view-tokens", f.view_tokens,
               "with the API server and --xds-tls, views' streams use the agent's own token "
               "instead of one the API server issues for each view's service account (istiod "
               "then refuses them unless PILOT_ENABLE_XDS_IDENTITY_CHECK=false)");
  app.add_option("--proc-root", f.proc_root,
                 "the host's /proc, where the agent finds pods that ran before it (with the "
                 "API server): their cgroups name their UIDs")
      ->capture_default_str();
  app.add_option("--netns-dir", f.netns_dir,
                 "where the container runtime names pods' network namespaces")
      ->capture_default_str();
  app.add_option("--view-token-audience", f.view_token_audience,
                 "the audience of the views' tokens (istiod's TOKEN_AUDIENCES)")
      ->capture_default_str();
  app.add_option("--pin-root", f.dataplane.pin_root, "bpffs directory for maps and links")
      ->capture_default_str();
  app.add_option("--cgroup-root", f.dataplane.cgroup_path,
                 "cgroup v2 directory the hooks attach to (default: the cgroup2 mount)");
  app.add_option("--cni-socket", f.cni.socket_path, "where sluice-cni reaches the agent")
      ->capture_default_str();
  app.add_option("--state-file", f.node.state_file, "the agent's record of its pods")
      ->capture_default_str();
  app.add_option("--labels-file", f.labels_file,
                 "namespace/pod labels from a JSON file (polled); with an API server given too, it "
                 "serves only the stop's DaemonSet lookup and sluice-cni's kubeconfig");
  app.add_flag("--kubernetes", f.kubernetes,
               "labels from the Kubernetes API server, with the pod's own service account "
               "(KUBERNETES_SERVICE_HOST/PORT, its token and ca.crt)");
  app.add_option("--kubeconfig", f.kubeconfig,
                 "labels from the API server of this kubeconfig's current context");
  app.add_option("--kube-server", f.kube_server,
                 "labels from the API server at this URL (with --kube-token-file, --kube-ca-file)");
  app.add_option("--kube-token-file", f.kube_token_file,
                 "bearer token for --kube-server (re-read when it changes)");
  app.add_option("--kube-ca-file", f.kube_ca_file, "CA bundle that verifies --kube-server");
  app.add_option("--excluded-namespaces", f.excluded_namespaces,
                 "comma list of namespaces whose pods are never enrolled, whatever their labels")
      ->capture_default_str();
  app.add_option("--proxy-port", f.node.proxy_port,
                 "in-pod capture listener (127.0.0.1) for L7 services (0: no L7 proxy; the "
                 "kernel then refuses L7 services rather than bypass their policy)")
      ->capture_default_str();
  app.add_option("--inbound-port", f.node.inbound_port,
                 "in-pod inbound listener (127.0.0.1): the kernel steers to it the pod ports "
                 "whose inbound config needs the proxy, e.g. a Sidecar ingress defaultEndpoint "
                 "(0: no inbound side; those ports then reach the application directly)")
      ->capture_default_str();
  app.add_option("--access-log", f.access_log, "L7 access log file ('-': stdout)")
      ->capture_default_str();
  app.add_flag("!--no-kernel-access-log", f.kernel_access_log,
               "node: no access-log lines for the connections the kernel translates");
  app.add_flag("!--no-kernel-tcp-metrics", f.kernel_tcp_metrics,
               "node: no Istio TCP metrics (istio_tcp_*) for the connections the kernel "
               "translates; sockops then does no per-connection metrics work");
  app.add_option("--kernel-fallback", f.kernel_fallback,
                 "node: kernel features to do without even where the kernel has them "
                 "(set_retval,netns_cookie or all), so their fallbacks run; see "
                 "docs/kernel-dataplane.md");
  app.add_option("--drain-seconds", f.drain_seconds,
                 "SIGTERM: how long L7 requests in flight may take to finish")
      ->capture_default_str();
  app.add_flag("!--no-namespace-streams", f.ns_streams,
               "node: one xDS stream for everything instead of one per view (namespace and "
               "labels) of its pods");
  app.add_option("--pod-name", f.gateway.id.pod_name, "gateway: this pod's name");
  app.add_option("--pod-namespace", f.gateway.id.pod_namespace, "gateway: this pod's namespace")
      ->capture_default_str();
  app.add_option("--pod-ip", f.gateway.pod_ip, "gateway: this pod's IP (xDS node ID)");
  app.add_option("--pod-labels", f.gateway.pod_labels,
                 "gateway: this pod's labels, k=v,k2=v2 (istiod selects Gateways by them)");
  app.add_option("--workers", f.gateway.workers, "gateway: L7 worker threads")
      ->capture_default_str();
  app.add_option("--l7-workers", f.l7.workers,
                 "node: L7 worker threads every pod's proxy shares (-1: one per CPU; 0: a "
                 "thread per pod, in its network namespace)")
      ->capture_default_str();
  app.add_option("--admin-address", f.admin_address, "admin HTTP (127.0.0.1 only)")
      ->capture_default_str();
  app.add_option("--log-level", f.log_level, "trace|debug|info|warn|error")->capture_default_str();

  // The node's lifecycle (cni_conf.h, shutdown.h).
  app.add_option("--cni-conf-dir", f.cni_conf.conf_dir,
                 "node: chain sluice-cni into the CNI configuration in this directory once "
                 "ready, and re-chain it when the primary CNI rewrites its file (empty: leave "
                 "the CNI configuration alone)");
  app.add_option("--cni-conflist", f.cni_conf.conflist,
                 "node: the primary CNI configuration's file name (default: the first "
                 "*.conflist, *.conf or *.json by name, as libcni picks it)");
  app.add_option("--cni-agent-socket", f.cni_conf.entry.agent_socket,
                 "node: agentSocket in the sluice-cni entry, the CNI socket as the host sees "
                 "it (default: --cni-socket)");
  app.add_flag("--cni-fail-open", f.cni_conf.entry.fail_open,
               "node: failOpen in the sluice-cni entry: every pod starts while the agent is "
               "unreachable, mesh pods without the mesh");
  app.add_option("--cni-exclude-namespaces", f.cni_conf.entry.exclude_namespaces,
                 "node: excludeNamespaces in the sluice-cni entry: pods there start while the "
                 "agent is unreachable (comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--cni-kubeconfig", f.cni_conf.entry.kubeconfig,
                 "node: where sluice-cni on the host finds the kubeconfig the agent writes "
                 "into --cni-conf-dir (default: CNI_CONF_DIR/sluice-kubeconfig)");
  app.add_option("--daemonset", f.daemonset,
                 "node: NAMESPACE/NAME of the agent's own DaemonSet; on SIGTERM, gone (or "
                 "being deleted) means an uninstall: the conflist entry, enrolments, programs "
                 "and pins are removed; present or unknown: all stay (an upgrade)");
}

}  // namespace sluice::agent
