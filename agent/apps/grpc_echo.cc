// The echo stand-in's servers (see grpc_echo.h): one gRPC server per --grpc port (each
// reply names its own port), the apps' HTTP server for --port, a thread per TCP echo
// connection for --tcp, then a wait for SIGTERM.
#include "grpc_echo.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "echo.grpc.pb.h"
#include "echo_forward.h"
#include "server.h"

namespace sluice::apps {
namespace {

// "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000" (or %5B/%5D-escaped) -> the address.
std::string PeerIp(std::string peer) {
  for (std::string_view prefix : {"ipv4:", "ipv6:"})
    if (peer.starts_with(prefix))
      peer.erase(0, prefix.size());
  for (auto [from, to] : {std::pair{"%5B", "["}, {"%5D", "]"}})
    for (auto at = peer.find(from); at != std::string::npos; at = peer.find(from))
      peer.replace(at, 3, to);
  if (peer.starts_with("[")) {
    auto close = peer.find(']');
    return close == std::string::npos ? peer : peer.substr(1, close - 1);
  }
  auto colon = peer.rfind(':');
  return colon == std::string::npos ? peer : peer.substr(0, colon);
}

class EchoService final : public proto::EchoTestService::Service {
 public:
  explicit EchoService(EchoIdentity id) : id_(std::move(id)) {}
  void set_port(int port) { port_ = port; }

  grpc::Status Echo(grpc::ServerContext* ctx, const proto::EchoRequest* in,
                    proto::EchoResponse* out) override {
    GrpcEchoCall call;
    call.message = in->message();
    auto authority = ctx->ExperimentalGetAuthority();
    call.authority.assign(authority.data(), authority.size());
    for (const auto& [k, v] : ctx->client_metadata())
      call.metadata.emplace_back(std::string(k.data(), k.size()), std::string(v.data(), v.size()));
    std::sort(call.metadata.begin(), call.metadata.end());
    call.peer_ip = PeerIp(ctx->peer());
    call.port = port_;
    out->set_message(FormatGrpcEcho(id_, call));
    return grpc::Status::OK;
  }

  // As the echo app: the server makes the calls itself (an xds:/// URL resolves through
  // this process's GRPC_XDS_BOOTSTRAP) and answers with every output, or with an error
  // (UNKNOWN, as a Go handler's plain error) if any call failed.
  grpc::Status ForwardEcho(grpc::ServerContext*, const proto::ForwardEchoRequest* in,
                           proto::ForwardEchoResponse* out) override {
    ForwardRequest req;
    req.url = in->url();
    req.count = in->count();
    req.qps = in->qps();
    if (in->timeout_micros() > 0)
      req.timeout = std::chrono::microseconds(in->timeout_micros());
    req.message = in->message();
    for (const auto& h : in->headers())
      req.headers.emplace_back(h.key(), h.value());
    auto result = sluice::apps::ForwardEcho(req);
    if (!result)
      return grpc::Status(grpc::StatusCode::UNKNOWN, result.error().message);
    if (result->failed > 0)
      return grpc::Status(grpc::StatusCode::UNKNOWN, result->Summary());
    for (auto& o : result->outputs)
      out->add_output(std::move(o));
    return grpc::Status::OK;
  }

 private:
  EchoIdentity id_;
  std::atomic<int> port_{0};
};

std::string HostPort(const std::string& address, int port) {
  bool v6 = address.find(':') != std::string::npos;
  return (v6 ? "[" + address + "]" : address) + ":" + std::to_string(port);
}

struct TcpListener {
  int fd = -1;
  int port = 0;
};

Result<TcpListener> BindTcp(const std::string& address, int port) {
  const std::string where = "tcp " + HostPort(address, port);
  sockaddr_storage ss{};
  socklen_t len = 0;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, address.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<std::uint16_t>(port));
    len = sizeof *v4;
  } else if (inet_pton(AF_INET6, address.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<std::uint16_t>(port));
    len = sizeof *v6;
  } else {
    return Fail(where + ": not an IP address");
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return FailErrno(where + ": socket", errno);
  int one = 1, off = 0;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (ss.ss_family == AF_INET6)
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);  // IPv4 too
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(fd, 1024) != 0) {
    int err = errno;
    close(fd);
    return FailErrno(where, err);
  }
  sockaddr_storage bound{};
  socklen_t blen = sizeof bound;
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &blen);
  int got = ntohs(bound.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&bound)->sin_port
                                             : reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  return TcpListener{fd, got};
}

std::string PeerAddress(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  char buf[INET6_ADDRSTRLEN] = "";
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
    return "";
  if (ss.ss_family == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, buf, sizeof buf);
  else
    inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, buf, sizeof buf);
  std::string ip(buf);
  if (ip.starts_with("::ffff:") && ip.find('.') != std::string::npos)
    ip.erase(0, 7);  // an IPv4 client on a dual-stack socket
  return ip;
}

// The echo app's TCP port: once the client has sent its first bytes, the server's
// fields, then every byte echoed back until the client closes.
void ServeTcp(int fd, const EchoIdentity& id, int port) {
  timeval tv{300, 0};  // an abandoned connection does not live forever
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  bool first = true;
  char buf[4096];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (first) {
      std::string fields = FormatTcpEchoFields(id, port, PeerAddress(fd));
      if (send(fd, fields.data(), fields.size(), MSG_NOSIGNAL) < 0)
        break;
      first = false;
    }
    if (n <= 0 || send(fd, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL) < 0)
      break;
  }
  close(fd);
}

}  // namespace

int RunGrpcEcho(const GrpcEchoOptions& opts) {
  // Blocked before any thread exists, so only sigwait below sees them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // Reflection lets grpcurl list and call the service without the .proto (as the Istio
  // blog's `grpcurl ... proto.EchoTestService/ForwardEcho` needs); the standard health
  // service answers gRPC health checks, as the echo app's does.
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::EnableDefaultHealthCheckService(true);

  // One gRPC server per port: each reply names the port its call came in on.
  std::vector<std::unique_ptr<EchoService>> services;
  std::vector<std::unique_ptr<grpc::Server>> grpc_servers;
  for (int port : opts.grpc_ports) {
    int bound = 0;
    auto service = std::make_unique<EchoService>(opts.identity);
    grpc::ServerBuilder builder;
    builder.AddListeningPort(HostPort(opts.address, port), grpc::InsecureServerCredentials(),
                             &bound);
    builder.RegisterService(service.get());
    auto server = builder.BuildAndStart();
    if (!server || bound == 0) {
      std::fprintf(stderr, "grpc-echo: grpc %s: cannot listen\n",
                   HostPort(opts.address, port).c_str());
      return 1;
    }
    service->set_port(bound);  // with port 0, known only now (before anyone can call)
    std::fprintf(stderr, "grpc-echo: listening on grpc %s\n",
                 HostPort(opts.address, bound).c_str());
    services.push_back(std::move(service));
    grpc_servers.push_back(std::move(server));
  }

  Server http(MakeEchoHttpHandler(opts.identity));
  for (int port : opts.http_ports) {
    auto bound = http.Listen(opts.address, static_cast<std::uint16_t>(port), nullptr);
    if (!bound) {
      std::fprintf(stderr, "grpc-echo: %s\n", bound.error().message.c_str());
      return 1;
    }
    std::fprintf(stderr, "grpc-echo: listening on http %s\n",
                 HostPort(opts.address, *bound).c_str());
  }
  http.Start();

  for (int port : opts.tcp_ports) {
    auto l = BindTcp(opts.address, port);
    if (!l) {
      std::fprintf(stderr, "grpc-echo: %s\n", l.error().message.c_str());
      return 1;
    }
    std::fprintf(stderr, "grpc-echo: listening on tcp %s\n",
                 HostPort(opts.address, l->port).c_str());
    std::thread([l = *l, id = opts.identity] {
      for (;;) {
        int c = accept4(l.fd, nullptr, nullptr, SOCK_CLOEXEC);
        if (c >= 0)
          std::thread(ServeTcp, c, std::cref(id), l.port).detach();
        else if (errno != EINTR && errno != ECONNABORTED)
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }).detach();
  }
  std::fflush(stderr);

  int sig = 0;
  sigwait(&stop, &sig);
  std::fprintf(stderr, "grpc-echo: signal %d, exiting\n", sig);
  std::fflush(stderr);
  // Calls may be in flight on gRPC's threads; leave without unwinding them.
  std::_Exit(0);
}

}  // namespace sluice::apps
