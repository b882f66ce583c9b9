// The agent<->plugin wire format: frame header checks, JSON bodies of requests and
// replies, and CallAgent, the plugin's side of one round trip.
#include "sluice/cni/protocol.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

namespace sluice::cni {
namespace {

using json = nlohmann::json;

int MillisUntil(Deadline deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  return left.count() <= 0 ? 0 : static_cast<int>(left.count());
}

// Waits until fd is ready for `events` or the deadline passes.
Result<void> WaitFor(int fd, short events, Deadline deadline, std::string_view what) {
  for (;;) {
    pollfd pfd{fd, events, 0};
    int rc = ::poll(&pfd, 1, MillisUntil(deadline));
    if (rc > 0)
      return {};
    if (rc == 0)
      return Fail(std::string(what) + ": timed out", ETIMEDOUT);
    if (errno != EINTR)
      return FailErrno(std::string(what) + ": poll", errno);
  }
}

Result<void> ReadExact(int fd, char* buf, std::size_t len, Deadline deadline,
                       std::string_view what) {
  std::size_t got = 0;
  while (got < len) {
    ssize_t n = ::recv(fd, buf + got, len - got, MSG_DONTWAIT);
    if (n > 0) {
      got += static_cast<std::size_t>(n);
      continue;
    }
    if (n == 0)
      return Fail(std::string(what) + ": peer closed the connection", EPIPE);
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return FailErrno(what, errno);
    if (auto w = WaitFor(fd, POLLIN, deadline, what); !w)
      return w;
  }
  return {};
}

std::string GetString(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

Result<std::string> RequireString(const json& j, const char* key, bool allow_empty) {
  auto it = j.find(key);
  if (it == j.end()) {
    if (allow_empty)
      return std::string();
    return Fail(std::string("field \"") + key + "\" is missing");
  }
  if (!it->is_string())
    return Fail(std::string("field \"") + key + "\" is not a string");
  auto s = it->get<std::string>();
  if (s.empty() && !allow_empty)
    return Fail(std::string("field \"") + key + "\" is empty");
  return s;
}

}  // namespace

std::string_view OperationName(Operation op) {
  switch (op) {
    case Operation::kAdd:
      return "ADD";
    case Operation::kDel:
      return "DEL";
    case Operation::kCheck:
      return "CHECK";
  }
  return "?";
}

std::array<std::byte, kHeaderSize> EncodeHeader(FrameKind kind, std::uint32_t length) {
  std::array<std::byte, kHeaderSize> out{};
  std::uint32_t magic = htonl(kProtocolMagic);
  std::uint16_t version = htons(kProtocolVersion);
  std::uint16_t k = htons(static_cast<std::uint16_t>(kind));
  std::uint32_t len = htonl(length);
  std::memcpy(out.data(), &magic, 4);
  std::memcpy(out.data() + 4, &version, 2);
  std::memcpy(out.data() + 6, &k, 2);
  std::memcpy(out.data() + 8, &len, 4);
  return out;
}

Result<FrameHeader> DecodeHeader(std::span<const std::byte, kHeaderSize> bytes) {
  std::uint32_t magic, len;
  std::uint16_t version, kind;
  std::memcpy(&magic, bytes.data(), 4);
  std::memcpy(&version, bytes.data() + 4, 2);
  std::memcpy(&kind, bytes.data() + 6, 2);
  std::memcpy(&len, bytes.data() + 8, 4);
  FrameHeader h;
  h.magic = ntohl(magic);
  h.version = ntohs(version);
  h.length = ntohl(len);
  kind = ntohs(kind);
  if (h.magic != kProtocolMagic) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "frame header: bad magic 0x%08x (want 0x%08x)", h.magic,
                  kProtocolMagic);
    return Fail(buf);
  }
  if (h.version != kProtocolVersion) {
    return Fail("frame header: unsupported protocol version " + std::to_string(h.version) +
                " (this side speaks " + std::to_string(kProtocolVersion) + ")");
  }
  if (kind != static_cast<std::uint16_t>(FrameKind::kRequest) &&
      kind != static_cast<std::uint16_t>(FrameKind::kReply)) {
    return Fail("frame header: unknown frame kind " + std::to_string(kind));
  }
  h.kind = static_cast<FrameKind>(kind);
  if (h.length > kMaxBodySize) {
    return Fail("frame header: body of " + std::to_string(h.length) + " bytes exceeds the " +
                std::to_string(kMaxBodySize) + "-byte limit");
  }
  return h;
}

Result<std::string> EncodeFrame(FrameKind kind, std::string_view body) {
  if (body.size() > kMaxBodySize) {
    return Fail("frame body of " + std::to_string(body.size()) + " bytes exceeds the " +
                std::to_string(kMaxBodySize) + "-byte limit");
  }
  auto header = EncodeHeader(kind, static_cast<std::uint32_t>(body.size()));
  std::string out(reinterpret_cast<const char*>(header.data()), header.size());
  out.append(body);
  return out;
}

std::string SerializeRequest(const CniRequest& req) {
  json j = {
      {"op", std::string(OperationName(req.op))},
      {"cniVersion", req.cni_version},
      {"containerId", req.container_id},
      {"netns", req.netns},
      {"ifname", req.ifname},
      {"pod", {{"name", req.pod_name}, {"namespace", req.pod_namespace}, {"uid", req.pod_uid}}},
      {"ips", req.ips},
  };
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<CniRequest> ParseRequest(std::string_view body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return Fail("request body: not a JSON object");
  CniRequest req;
  auto op = RequireString(j, "op", false);
  SLUICE_RETURN_IF_ERROR_CTX(op, "request");
  if (*op == "ADD") {
    req.op = Operation::kAdd;
  } else if (*op == "DEL") {
    req.op = Operation::kDel;
  } else if (*op == "CHECK") {
    req.op = Operation::kCheck;
  } else {
    return Fail("request: field \"op\": unknown operation \"" + *op + "\"");
  }
  auto cid = RequireString(j, "containerId", false);
  SLUICE_RETURN_IF_ERROR_CTX(cid, "request");
  req.container_id = *cid;
  // DEL may come without a namespace (already gone); ADD and CHECK need one.
  auto netns = RequireString(j, "netns", req.op == Operation::kDel);
  SLUICE_RETURN_IF_ERROR_CTX(netns, "request");
  req.netns = *netns;
  req.cni_version = GetString(j, "cniVersion");
  req.ifname = GetString(j, "ifname");
  if (auto pod = j.find("pod"); pod != j.end()) {
    if (!pod->is_object())
      return Fail("request: field \"pod\" is not an object");
    req.pod_name = GetString(*pod, "name");
    req.pod_namespace = GetString(*pod, "namespace");
    req.pod_uid = GetString(*pod, "uid");
  }
  if (auto ips = j.find("ips"); ips != j.end()) {
    if (!ips->is_array())
      return Fail("request: field \"ips\" is not an array");
    for (const auto& ip : *ips) {
      if (!ip.is_string())
        return Fail("request: field \"ips\" holds a non-string");
      req.ips.push_back(ip.get<std::string>());
    }
  }
  return req;
}

std::string SerializeReply(const CniReply& reply) {
  json j = {{"ok", reply.ok}, {"enrolled", reply.enrolled}};
  if (!reply.ok) {
    j["code"] = reply.code;
    j["msg"] = reply.msg;
    if (!reply.details.empty())
      j["details"] = reply.details;
  } else if (!reply.msg.empty()) {
    j["msg"] = reply.msg;
  }
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<CniReply> ParseReply(std::string_view body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return Fail("reply body: not a JSON object");
  auto ok = j.find("ok");
  if (ok == j.end() || !ok->is_boolean())
    return Fail("reply: field \"ok\" missing or not bool");
  CniReply r;
  r.ok = ok->get<bool>();
  if (auto e = j.find("enrolled"); e != j.end() && e->is_boolean())
    r.enrolled = e->get<bool>();
  r.msg = GetString(j, "msg");
  r.details = GetString(j, "details");
  if (!r.ok) {
    auto code = j.find("code");
    if (code == j.end() || !code->is_number_integer()) {
      return Fail("reply: error without an integer \"code\"");
    }
    r.code = code->get<int>();
  }
  return r;
}

Result<void> WriteFrame(int fd, FrameKind kind, std::string_view body, Deadline deadline) {
  auto frame = EncodeFrame(kind, body);
  SLUICE_RETURN_IF_ERROR(frame);
  std::size_t sent = 0;
  while (sent < frame->size()) {
    ssize_t n = ::send(fd, frame->data() + sent, frame->size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n >= 0) {
      sent += static_cast<std::size_t>(n);
      continue;
    }
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return FailErrno("write frame", errno);
    if (auto w = WaitFor(fd, POLLOUT, deadline, "write frame"); !w)
      return w;
  }
  return {};
}

Result<std::string> ReadFrame(int fd, FrameKind expected, Deadline deadline) {
  std::array<std::byte, kHeaderSize> raw;
  if (auto r = ReadExact(fd, reinterpret_cast<char*>(raw.data()), raw.size(), deadline,
                         "read frame header");
      !r) {
    return std::unexpected(r.error());
  }
  auto header = DecodeHeader(raw);
  SLUICE_RETURN_IF_ERROR(header);
  if (header->kind != expected) {
    return Fail("frame header: unexpected frame kind " +
                std::to_string(static_cast<int>(header->kind)));
  }
  std::string body(header->length, '\0');
  SLUICE_RETURN_IF_ERROR(ReadExact(fd, body.data(), body.size(), deadline, "read frame body"));
  return body;
}

Result<CniReply> CallAgent(const std::string& socket_path, const CniRequest& req,
                           std::chrono::milliseconds timeout) {
  const Deadline deadline = std::chrono::steady_clock::now() + timeout;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    return Fail("agent socket path \"" + socket_path + "\" is too long", ENAMETOOLONG);
  }
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return FailErrno("socket", errno);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  const std::string where = "agent at " + socket_path;
  // A Unix stream connect completes or fails at once; EAGAIN means the agent's backlog is
  // full, so retry until the deadline.
  while (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN)
      return FailErrno("connect to " + where, errno);
    if (std::chrono::steady_clock::now() >= deadline) {
      return Fail("connect to " + where + ": timed out (backlog full)", ETIMEDOUT);
    }
    ::usleep(10 * 1000);
  }
  if (auto w = WriteFrame(fd, FrameKind::kRequest, SerializeRequest(req), deadline); !w) {
    // A busy agent answers at once and closes without reading: the reply may be
    // waiting even though our write failed.
    auto early = ReadFrame(fd, FrameKind::kReply, deadline);
    if (!early)
      return Wrap(where, w.error());
    auto reply = ParseReply(*early);
    SLUICE_RETURN_IF_ERROR_CTX(reply, where);
    return reply;
  }
  auto body = ReadFrame(fd, FrameKind::kReply, deadline);
  SLUICE_RETURN_IF_ERROR_CTX(body, where);
  auto reply = ParseReply(*body);
  SLUICE_RETURN_IF_ERROR_CTX(reply, where);
  return reply;
}

}  // namespace sluice::cni
