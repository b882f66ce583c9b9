// Netns without root: the caller's own namespace and the errors for wrong paths.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>

#include "cni/test_support.h"
#include "sluice/netns/netns.h"

using namespace sluice::netns;
using sluice::cni::testing::TempDir;

TEST_CASE("Netns opens network namespaces and refuses other files") {
  auto self = Netns::Open("/proc/self/ns/net");
  REQUIRE(self);
  auto current = Netns::Current();
  REQUIRE(current);
  CHECK(self->SameAs(*current));
  CHECK(self->inode() != 0);

  auto missing = Netns::Open("/var/run/netns/sluicet-does-not-exist");
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == ENOENT);
  CHECK_THAT(missing.error().message, Catch::Contains("sluicet-does-not-exist"));

  TempDir tmp;
  std::ofstream(tmp / "plain") << "x";
  auto plain = Netns::Open(tmp / "plain");
  REQUIRE_FALSE(plain);
  CHECK_THAT(plain.error().message, Catch::Contains("not a namespace file"));

  auto uts = Netns::Open("/proc/self/ns/uts");
  REQUIRE_FALSE(uts);
  CHECK_THAT(uts.error().message, Catch::Contains("not a network one"));
}

TEST_CASE("Netns cookie is the SO_NETNS_COOKIE sockets in it report") {
  auto self = Netns::Current();
  REQUIRE(self);
  auto cookie = self->Cookie();
  REQUIRE(cookie);
  CHECK(*cookie != 0);
  int s = ::socket(AF_INET6, SOCK_STREAM, 0);
  std::uint64_t direct = 0;
  socklen_t len = sizeof direct;
  REQUIRE(::getsockopt(s, SOL_SOCKET, 71 /* SO_NETNS_COOKIE */, &direct, &len) == 0);
  ::close(s);
  CHECK(*cookie == direct);
}

TEST_CASE("Netns listens on loopback, and bad addresses are named") {
  auto self = Netns::Current();
  REQUIRE(self);
  auto l = self->ListenTcp("127.0.0.1", 0);
  REQUIRE(l);
  auto port = LocalPort(l->get());
  REQUIRE(port);
  CHECK(*port != 0);
  int c = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(*port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  ::close(c);

  auto bad = self->ListenTcp("localhost", 0);
  REQUIRE_FALSE(bad);
  CHECK_THAT(bad.error().message, Catch::Contains("\"localhost\" is not an IP address"));
  // 192.0.2.1 (TEST-NET-1) is not assigned here: bind fails, nothing is sent anywhere.
  auto absent = self->ListenTcp("192.0.2.1", 0);
  REQUIRE_FALSE(absent);
  CHECK(absent.error().code == EADDRNOTAVAIL);
}
