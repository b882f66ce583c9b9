// The agent's CNI server (agent/daemon/cni_server.cc) over its real Unix socket: the
// socket file, requests reaching the handler, errors as CNI codes, bad frames, slow,
// excess and foreign peers, stopping, and many plugins at once.
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <fstream>
#include <thread>

#include "cni/test_support.h"
#include "cni_server.h"

using namespace sluice;
using namespace sluice::cni;
using sluice::cni::testing::RecordingHandler;
using sluice::cni::testing::TempDir;

namespace {

// A raw client for sending what a well-behaved plugin never would.
struct RawClient {
  int fd = -1;
  explicit RawClient(const std::string& path) {
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  }
  ~RawClient() { ::close(fd); }
  void Send(const std::string& bytes) {
    REQUIRE(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(bytes.size()));
  }
  Result<CniReply> Reply() {
    auto body = ReadFrame(fd, FrameKind::kReply,
                          std::chrono::steady_clock::now() + std::chrono::seconds(3));
    if (!body)
      return std::unexpected(body.error());
    return ParseReply(*body);
  }
};

CniRequest AddRequest() {
  CniRequest req;
  req.op = Operation::kAdd;
  req.cni_version = "1.0.0";
  req.container_id = "c-1";
  req.netns = "/var/run/netns/sluicet-x";
  req.ifname = "eth0";
  req.pod_name = "web-0";
  req.pod_namespace = "shop";
  req.pod_uid = "uid-web-0";
  req.ips = {"10.30.0.7/24"};
  return req;
}

constexpr std::chrono::seconds kCallTimeout{3};

}  // namespace

TEST_CASE("server creates its directory and a 0600 socket, removes it on stop") {
  TempDir tmp;
  RecordingHandler handler;
  const std::string path = tmp / "run/sluice/cni.sock";
  {
    auto server = CniServer::Start({.socket_path = path}, handler);
    REQUIRE(server);
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK((st.st_mode & 0777) == 0600);
    REQUIRE(::stat((tmp / "run/sluice").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0700);
  }
  CHECK_FALSE(std::filesystem::exists(path));
}

TEST_CASE("server replaces a stale socket but refuses to clobber a regular file") {
  TempDir tmp;
  RecordingHandler handler;
  const std::string path = tmp / "cni.sock";
  // Leave a socket file behind without a listener.
  {
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    ::close(fd);
  }
  REQUIRE(std::filesystem::exists(path));
  auto restarted = CniServer::Start({.socket_path = path}, handler);
  REQUIRE(restarted);
  auto reply = CallAgent(path, AddRequest(), kCallTimeout);
  REQUIRE(reply);
  CHECK(reply->ok);
  restarted->get()->Stop();

  const std::string file = tmp / "not-a-socket";
  std::ofstream(file) << "keep me";
  auto refused = CniServer::Start({.socket_path = file}, handler);
  REQUIRE_FALSE(refused);
  CHECK_THAT(refused.error().message, Catch::Contains("not a socket"));
  CHECK(std::filesystem::file_size(file) == 7);
}

TEST_CASE("ADD, CHECK and DEL reach the handler with the pod's details") {
  TempDir tmp;
  RecordingHandler handler;
  auto server = CniServer::Start({.socket_path = tmp / "cni.sock"}, handler);
  REQUIRE(server);
  const std::string path = (*server)->socket_path();

  auto add = CallAgent(path, AddRequest(), kCallTimeout);
  REQUIRE(add);
  CHECK(add->ok);
  CHECK(add->enrolled);
  CHECK(add->msg == "test handler");
  REQUIRE(handler.adds().size() == 1);
  const auto adds = handler.adds();
  const PodInfo& pod = adds[0];
  CHECK(pod.name == "web-0");
  CHECK(pod.pod_namespace == "shop");
  CHECK(pod.uid == "uid-web-0");
  CHECK(pod.netns == "/var/run/netns/sluicet-x");
  CHECK(pod.container_id == "c-1");
  CHECK(pod.ifname == "eth0");
  CHECK(pod.ips == std::vector<std::string>{"10.30.0.7/24"});

  handler.set_enrol(false);
  auto req = AddRequest();
  req.op = Operation::kCheck;
  auto check = CallAgent(path, req, kCallTimeout);
  REQUIRE(check);
  CHECK(check->ok);
  CHECK_FALSE(check->enrolled);
  CHECK(handler.checks().size() == 1);

  req.op = Operation::kDel;
  req.netns.clear();
  auto del = CallAgent(path, req, kCallTimeout);
  REQUIRE(del);
  CHECK(del->ok);
  REQUIRE(handler.dels().size() == 1);
  CHECK(handler.dels()[0].netns.empty());
  CHECK((*server)->stats().requests == 3);
}

TEST_CASE("handler errors become CNI codes: EAGAIN -> 11, others -> 100") {
  TempDir tmp;
  RecordingHandler handler;
  auto server = CniServer::Start({.socket_path = tmp / "cni.sock"}, handler);
  REQUIRE(server);
  handler.set_fail_add(Error{"config not synced yet", EAGAIN});
  auto r = CallAgent((*server)->socket_path(), AddRequest(), kCallTimeout);
  REQUIRE(r);
  CHECK_FALSE(r->ok);
  CHECK(r->code == codes::kTryAgainLater);
  CHECK_THAT(r->msg, Catch::Contains("config not synced yet"));

  handler.set_fail_add(Error{"open netns /proc/1/ns/net: Permission denied", EACCES});
  r = CallAgent((*server)->socket_path(), AddRequest(), kCallTimeout);
  REQUIRE(r);
  CHECK_FALSE(r->ok);
  CHECK(r->code == codes::kAgentFailed);
  CHECK_THAT(r->msg, Catch::Contains("Permission denied"));
}

TEST_CASE("bad frames are answered with an error and the server keeps serving") {
  TempDir tmp;
  RecordingHandler handler;
  auto server = CniServer::Start({.socket_path = tmp / "cni.sock"}, handler);
  REQUIRE(server);
  const std::string path = (*server)->socket_path();

  SECTION("bad magic") {
    RawClient c(path);
    c.Send("GET / HTTP/1.1\r\n\r\n");
    auto reply = c.Reply();
    REQUIRE(reply);
    CHECK(reply->code == codes::kAgentProtocol);
    CHECK_THAT(reply->msg, Catch::Contains("bad magic"));
  }
  SECTION("unknown version") {
    auto frame = *EncodeFrame(FrameKind::kRequest, "{}");
    frame[5] = 7;
    RawClient c(path);
    c.Send(frame);
    auto reply = c.Reply();
    REQUIRE(reply);
    CHECK(reply->code == codes::kAgentProtocol);
    CHECK_THAT(reply->msg, Catch::Contains("version 7"));
  }
  SECTION("oversize") {
    auto frame = *EncodeFrame(FrameKind::kRequest, "{}");
    std::uint32_t huge = htonl(kMaxBodySize + 1);
    std::memcpy(frame.data() + 8, &huge, 4);
    RawClient c(path);
    c.Send(frame.substr(0, kHeaderSize));
    auto reply = c.Reply();
    REQUIRE(reply);
    CHECK(reply->code == codes::kAgentProtocol);
    CHECK_THAT(reply->msg, Catch::Contains("exceeds"));
  }
  SECTION("good frame, bad JSON") {
    RawClient c(path);
    c.Send(*EncodeFrame(FrameKind::kRequest, "{\"op\":"));
    auto reply = c.Reply();
    REQUIRE(reply);
    CHECK(reply->code == codes::kDecodeFailure);
  }
  CHECK(handler.adds().empty());
  CHECK((*server)->stats().bad_requests == 1);
  auto good = CallAgent(path, AddRequest(), kCallTimeout);
  REQUIRE(good);
  CHECK(good->ok);
  CHECK(handler.adds().size() == 1);
}

TEST_CASE("a client that never sends does not block others and is timed out") {
  TempDir tmp;
  RecordingHandler handler;
  auto server = CniServer::Start(
      {.socket_path = tmp / "cni.sock", .io_timeout = std::chrono::milliseconds(400)}, handler);
  REQUIRE(server);
  const std::string path = (*server)->socket_path();
  RawClient silent(path);
  RawClient half(path);
  half.Send(EncodeFrame(FrameKind::kRequest, "{}")->substr(0, 5));  // half a header

  auto start = std::chrono::steady_clock::now();
  auto r = CallAgent(path, AddRequest(), kCallTimeout);
  REQUIRE(r);
  CHECK(r->ok);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::milliseconds(300));

  // The stalled clients are cut off after io_timeout.
  auto reply = silent.Reply();
  REQUIRE(reply);
  CHECK(reply->code == codes::kAgentProtocol);
  CHECK_THAT(reply->msg, Catch::Contains("timed out"));
  CHECK(half.Reply());
  CHECK((*server)->stats().timeouts == 2);
}

TEST_CASE("beyond max_connections a client is told to try again later") {
  TempDir tmp;
  RecordingHandler handler;
  auto server = CniServer::Start({.socket_path = tmp / "cni.sock", .max_connections = 1}, handler);
  REQUIRE(server);
  const std::string path = (*server)->socket_path();
  RawClient hog(path);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // let it be accepted
  auto r = CallAgent(path, AddRequest(), kCallTimeout);
  REQUIRE(r);
  CHECK_FALSE(r->ok);
  CHECK(r->code == codes::kTryAgainLater);
  CHECK((*server)->stats().rejected_busy == 1);
  CHECK(handler.adds().empty());
}

TEST_CASE("stop returns promptly with clients still connected") {
  TempDir tmp;
  RecordingHandler handler;
  auto server = CniServer::Start({.socket_path = tmp / "cni.sock"}, handler);
  REQUIRE(server);
  RawClient stalled((*server)->socket_path());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto start = std::chrono::steady_clock::now();
  (*server)->Stop();
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(1));
}

TEST_CASE("a peer with another uid is refused even when it can reach the socket") {
  if (::geteuid() != 0) {
    WARN("needs root to act as another uid; skipped");
    return;
  }
  TempDir tmp;
  ::chmod(tmp.path().c_str(), 0755);
  RecordingHandler handler;
  auto server = CniServer::Start({.socket_path = tmp / "cni.sock"}, handler);
  REQUIRE(server);
  const std::string path = (*server)->socket_path();
  REQUIRE(::chmod(path.c_str(), 0666) == 0);  // as if someone loosened the mode

  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // Child: only syscalls and the protocol client; exit status carries the verdict.
    if (::setgid(65534) != 0 || ::setuid(65534) != 0)
      ::_exit(10);
    auto reply = CallAgent(path, AddRequest(), std::chrono::seconds(3));
    if (!reply)
      ::_exit(11);
    if (reply->ok || reply->code != codes::kAgentFailed ||
        reply->msg.find("peer uid 65534") == std::string::npos)
      ::_exit(12);
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(handler.adds().empty());
  CHECK((*server)->stats().rejected_peer == 1);

  // Root still gets through.
  auto ok = CallAgent(path, AddRequest(), kCallTimeout);
  REQUIRE(ok);
  CHECK(ok->ok);
}

TEST_CASE("many plugins at once: every call is answered, handler calls never overlap") {
  TempDir tmp;
  struct CountingHandler : RecordingHandler {
    std::atomic<int> inside{0};
    std::atomic<int> max_inside{0};
    Result<AddReply> OnAdd(const PodInfo& pod) override {
      int now = ++inside;
      int prev = max_inside.load();
      while (now > prev && !max_inside.compare_exchange_weak(prev, now)) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      --inside;
      return RecordingHandler::OnAdd(pod);
    }
  } handler;
  auto server = CniServer::Start({.socket_path = tmp / "cni.sock"}, handler);
  REQUIRE(server);
  const std::string path = (*server)->socket_path();
  constexpr int kClients = 40;
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      auto req = AddRequest();
      req.container_id = "c-" + std::to_string(i);
      auto r = CallAgent(path, req, std::chrono::seconds(5));
      if (r && r->ok)
        ++ok;
    });
  }
  for (auto& t : clients)
    t.join();
  CHECK(ok == kClients);
  CHECK(handler.adds().size() == kClients);
  CHECK(handler.max_inside == 1);
}
