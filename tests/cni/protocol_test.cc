#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>

#include "sluice/cni/protocol.h"

using namespace sluice::cni;

namespace {

std::array<std::byte, kHeaderSize> HeaderOf(const std::string& frame) {
  std::array<std::byte, kHeaderSize> h{};
  std::memcpy(h.data(), frame.data(), kHeaderSize);
  return h;
}

void PutU32(std::string& frame, std::size_t off, std::uint32_t host) {
  std::uint32_t v = htonl(host);
  std::memcpy(frame.data() + off, &v, 4);
}
void PutU16(std::string& frame, std::size_t off, std::uint16_t host) {
  std::uint16_t v = htons(host);
  std::memcpy(frame.data() + off, &v, 2);
}

struct SocketPair {
  int fds[2] = {-1, -1};
  SocketPair() { REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0); }
  ~SocketPair() {
    ::close(fds[0]);
    ::close(fds[1]);
  }
};

Deadline In(int ms) {
  return std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
}

}  // namespace

TEST_CASE("frame header is 12 bytes: magic, version, kind, length in network order") {
  auto frame = EncodeFrame(FrameKind::kRequest, "{}");
  REQUIRE(frame);
  REQUIRE(frame->size() == kHeaderSize + 2);
  const unsigned char* b = reinterpret_cast<const unsigned char*>(frame->data());
  CHECK(std::string(frame->data(), 4) == "SLCN");
  CHECK((b[4] << 8 | b[5]) == kProtocolVersion);
  CHECK((b[6] << 8 | b[7]) == 1);
  CHECK((b[8] << 24 | b[9] << 16 | b[10] << 8 | b[11]) == 2);
  CHECK(frame->substr(kHeaderSize) == "{}");

  auto h = DecodeHeader(HeaderOf(*frame));
  REQUIRE(h);
  CHECK(h->kind == FrameKind::kRequest);
  CHECK(h->length == 2);
}

TEST_CASE("bad frame headers are rejected with a reason") {
  auto frame = *EncodeFrame(FrameKind::kReply, "{}");
  SECTION("bad magic") {
    PutU32(frame, 0, 0x47455420);  // "GET " — an HTTP client on the wrong socket
    auto h = DecodeHeader(HeaderOf(frame));
    REQUIRE_FALSE(h);
    CHECK_THAT(h.error().message, Catch::Contains("bad magic 0x47455420"));
  }
  SECTION("unknown version") {
    PutU16(frame, 4, 2);
    auto h = DecodeHeader(HeaderOf(frame));
    REQUIRE_FALSE(h);
    CHECK_THAT(h.error().message, Catch::Contains("unsupported protocol version 2"));
  }
  SECTION("unknown kind") {
    PutU16(frame, 6, 9);
    auto h = DecodeHeader(HeaderOf(frame));
    REQUIRE_FALSE(h);
    CHECK_THAT(h.error().message, Catch::Contains("unknown frame kind 9"));
  }
  SECTION("oversize body announced") {
    PutU32(frame, 8, kMaxBodySize + 1);
    auto h = DecodeHeader(HeaderOf(frame));
    REQUIRE_FALSE(h);
    CHECK_THAT(h.error().message, Catch::Contains("exceeds"));
  }
}

TEST_CASE("an oversize body cannot be encoded") {
  std::string body(kMaxBodySize + 1, 'x');
  CHECK_FALSE(EncodeFrame(FrameKind::kRequest, body));
  CHECK(EncodeFrame(FrameKind::kRequest, std::string(kMaxBodySize, 'x')));
}

TEST_CASE("request round-trips through JSON") {
  CniRequest req;
  req.op = Operation::kAdd;
  req.cni_version = "1.0.0";
  req.container_id = "abc123";
  req.netns = "/var/run/netns/cni-1";
  req.ifname = "eth0";
  req.pod_name = "cart-7d9";
  req.pod_namespace = "shop";
  req.pod_uid = "6f1e";
  req.ips = {"10.22.0.5/24", "fd00::5/64"};
  auto back = ParseRequest(SerializeRequest(req));
  REQUIRE(back);
  CHECK(back->op == Operation::kAdd);
  CHECK(back->cni_version == "1.0.0");
  CHECK(back->container_id == "abc123");
  CHECK(back->netns == "/var/run/netns/cni-1");
  CHECK(back->ifname == "eth0");
  CHECK(back->pod_name == "cart-7d9");
  CHECK(back->pod_namespace == "shop");
  CHECK(back->pod_uid == "6f1e");
  CHECK(back->ips == req.ips);

  req.op = Operation::kDel;
  req.netns.clear();  // a DEL after the namespace is gone
  auto del = ParseRequest(SerializeRequest(req));
  REQUIRE(del);
  CHECK(del->op == Operation::kDel);
  CHECK(del->netns.empty());
}

TEST_CASE("bad request bodies are rejected naming the field") {
  CHECK_THAT(ParseRequest("not json").error().message, Catch::Contains("not a JSON object"));
  CHECK_THAT(ParseRequest(R"({"op":"PATCH","containerId":"a","netns":"/x"})").error().message,
             Catch::Contains("unknown operation \"PATCH\""));
  CHECK_THAT(ParseRequest(R"({"op":"ADD","netns":"/x"})").error().message,
             Catch::Contains("\"containerId\" is missing"));
  CHECK_THAT(ParseRequest(R"({"op":"ADD","containerId":"a"})").error().message,
             Catch::Contains("\"netns\" is missing"));
  CHECK_THAT(
      ParseRequest(R"({"op":"ADD","containerId":"a","netns":"/x","ips":[1]})").error().message,
      Catch::Contains("\"ips\""));
}

TEST_CASE("reply round-trips, errors keep their code") {
  CniReply ok;
  ok.enrolled = true;
  ok.msg = "listeners open";
  auto back = ParseReply(SerializeReply(ok));
  REQUIRE(back);
  CHECK(back->ok);
  CHECK(back->enrolled);
  CHECK(back->msg == "listeners open");

  CniReply err;
  err.ok = false;
  err.code = 11;
  err.msg = "busy";
  err.details = "reconciling";
  auto eback = ParseReply(SerializeReply(err));
  REQUIRE(eback);
  CHECK_FALSE(eback->ok);
  CHECK(eback->code == 11);
  CHECK(eback->details == "reconciling");

  CHECK_FALSE(ParseReply(R"({"ok":false,"msg":"x"})"));  // error without a code
  CHECK_FALSE(ParseReply(R"({"enrolled":true})"));       // no "ok"
}

TEST_CASE("frames cross a real socket, a short or oversize stream fails, not hangs") {
  SocketPair sp;
  SECTION("round trip") {
    REQUIRE(WriteFrame(sp.fds[0], FrameKind::kRequest, R"({"a":1})", In(1000)));
    auto body = ReadFrame(sp.fds[1], FrameKind::kRequest, In(1000));
    REQUIRE(body);
    CHECK(*body == R"({"a":1})");
  }
  SECTION("wrong kind") {
    REQUIRE(WriteFrame(sp.fds[0], FrameKind::kReply, "{}", In(1000)));
    auto body = ReadFrame(sp.fds[1], FrameKind::kRequest, In(1000));
    REQUIRE_FALSE(body);
    CHECK_THAT(body.error().message, Catch::Contains("unexpected frame kind"));
  }
  SECTION("truncated body then close") {
    auto frame = *EncodeFrame(FrameKind::kRequest, "{\"abc\":1}");
    REQUIRE(::write(sp.fds[0], frame.data(), frame.size() - 3) > 0);
    ::shutdown(sp.fds[0], SHUT_WR);
    auto body = ReadFrame(sp.fds[1], FrameKind::kRequest, In(1000));
    REQUIRE_FALSE(body);
    CHECK_THAT(body.error().message, Catch::Contains("peer closed"));
  }
  SECTION("silent peer times out") {
    auto start = std::chrono::steady_clock::now();
    auto body = ReadFrame(sp.fds[1], FrameKind::kRequest, In(150));
    REQUIRE_FALSE(body);
    CHECK(body.error().code == ETIMEDOUT);
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(2));
  }
  SECTION("oversize announced length is refused before reading the body") {
    auto frame = *EncodeFrame(FrameKind::kRequest, "{}");
    PutU32(frame, 8, 1u << 30);
    REQUIRE(::write(sp.fds[0], frame.data(), kHeaderSize) == kHeaderSize);
    auto body = ReadFrame(sp.fds[1], FrameKind::kRequest, In(1000));
    REQUIRE_FALSE(body);
    CHECK_THAT(body.error().message, Catch::Contains("exceeds"));
  }
}

TEST_CASE("CallAgent reports an absent agent as unreachable with the errno") {
  auto r = CallAgent("/nonexistent-dir-sluicet/cni.sock", CniRequest{}, std::chrono::seconds(1));
  REQUIRE_FALSE(r);
  CHECK(r.error().code == ENOENT);
  CHECK_THAT(r.error().message, Catch::Contains("/nonexistent-dir-sluicet/cni.sock"));
}
