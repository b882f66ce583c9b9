// The HTTP/2 attacks of issue 18, each crafted as raw frames against the server role, each
// asserting its bound (GOAWAY or RST_STREAM sent, the counter, what was kept), and
// malformed requests refused as RFC 9113 §8 requires. The clock is a fake one, so the
// time-based bounds are exact.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "h2_test_util.h"

using namespace h2test;
using sluice::proxy::h2::ErrorCode;
using sluice::proxy::h2::Options;
using sluice::proxy::h2::Role;

namespace {

struct Server {
  int64_t now = 1'000'000;
  Recorder rec;
  Session s;
  explicit Server(Options o = {}) : s(Role::kServer, &rec, WithClock(std::move(o))) {
    rec.session = &s;
  }
  Options WithClock(Options o) {
    o.now_ms = [this] { return now; };
    return o;
  }
  // The client's preface and SETTINGS, and the server's reply drained.
  void Start(const std::string& settings = Settings({})) {
    REQUIRE(s.Receive(ClientStart(settings)));
    Drain(s);
  }
};

// A HEADERS frame holding the whole block.
std::string Headers(uint32_t id, const std::string& block, bool end_stream) {
  return Frame(kHeaders, kEndHeaders | (end_stream ? kEndStream : 0), id, block);
}

}  // namespace

TEST_CASE("h2 attack: rapid reset (CVE-2023-44487) gets GOAWAY ENHANCE_YOUR_CALM") {
  Options o;
  o.premature_reset_total_streams = 100;
  Server srv(o);
  srv.Start();
  Hpack hp;
  std::string wire;
  for (uint32_t i = 0; i < 400; ++i) {
    uint32_t id = 1 + 2 * i;
    wire += Headers(id, hp.Encode(Get("/r")), false) + Rst(id, 0x8 /* CANCEL */);
  }
  CHECK_FALSE(srv.s.Receive(wire));
  auto frames = Drain(srv.s);
  auto ga = FindFrame(frames, kGoaway);
  REQUIRE(ga);
  CHECK(ga->Code() == ErrorCode::kEnhanceYourCalm);
  const auto& st = srv.s.stats();
  CHECK(st.rapid_reset_goaways == 1);
  // Before 100 streams closed, half of that many premature resets is enough: 50.
  CHECK(st.premature_resets == 50);
  CHECK(st.streams_opened == 50);  // nothing after the GOAWAY was processed
  CHECK(srv.s.Done());
  CHECK(std::string(srv.s.error()).find("rapid reset") != std::string::npos);
}

TEST_CASE("h2 attack: rapid reset by malformed requests the server must reset itself") {
  Options o;
  o.premature_reset_total_streams = 100;
  Server srv(o);
  srv.Start();
  Hpack hp;
  std::string wire;
  for (uint32_t i = 0; i < 200; ++i) {
    auto f = Get("/");
    f.emplace_back("connection", "close");  // malformed in HTTP/2: reset by the server
    wire += Headers(1 + 2 * i, hp.Encode(f), true);
  }
  CHECK_FALSE(srv.s.Receive(wire));
  auto ga = FindFrame(Drain(srv.s), kGoaway);
  REQUIRE(ga);
  CHECK(ga->Code() == ErrorCode::kEnhanceYourCalm);
  CHECK(srv.s.stats().rapid_reset_goaways == 1);
  CHECK(srv.s.stats().messaging_errors >= 50);
  CHECK(srv.rec.streams.empty() == false);
  for (auto& [id, log] : srv.rec.streams)
    CHECK(log.heads == 0);  // no malformed head reached the handler
}

TEST_CASE("h2 attack: many short complete streams are not a rapid reset") {
  Options o;
  o.premature_reset_total_streams = 100;
  Server srv(o);
  srv.rec.on_end = [&srv](int32_t id, StreamLog&) {
    Head h;
    h.status = 200;
    srv.s.SubmitResponse(id, h, true);
  };
  srv.Start();
  Hpack hp;
  for (uint32_t i = 0; i < 600; ++i) {
    REQUIRE(srv.s.Receive(Headers(1 + 2 * i, hp.Encode(Get("/ok")), true)));
    Drain(srv.s);
  }
  CHECK(srv.s.stats().streams_closed == 600);
  CHECK(srv.s.stats().premature_resets == 0);
  CHECK(srv.s.stats().goaways_sent == 0);
}

TEST_CASE("h2 attack: CONTINUATION flood is cut after max_continuations") {
  Server srv;
  srv.Start();
  Hpack hp;
  std::string block = hp.Encode(Get("/"));
  std::string wire = Frame(kHeaders, kEndStream, 1, block);  // no END_HEADERS
  for (int i = 0; i < 50; ++i)
    wire += Frame(kContinuation, 0, 1, std::string(100, '\0'));  // indexed-field padding
  CHECK_FALSE(srv.s.Receive(wire));
  auto ga = FindFrame(Drain(srv.s), kGoaway);
  REQUIRE(ga);
  CHECK(srv.s.stats().continuation_floods == 1);
  CHECK(srv.rec.streams.count(1) == 0);  // no head delivered
}

TEST_CASE("h2 attack: the CONTINUATION bound is the configured one") {
  Options o;
  o.max_continuations = 4;  // nghttp2's default is 8
  Hpack hp;
  std::string block = hp.Encode(Get("/split"));
  REQUIRE(block.size() >= 6);
  auto split = [&](int continuations) {
    std::string wire;
    std::size_t step = block.size() / (continuations + 1);
    for (int i = 0; i <= continuations; ++i) {
      std::size_t from = i * step, len = i == continuations ? std::string::npos : step;
      uint8_t flags = i == continuations ? kEndHeaders : 0;
      wire += i == 0 ? Frame(kHeaders, flags | kEndStream, 1, block.substr(from, len))
                     : Frame(kContinuation, flags, 1, block.substr(from, len));
    }
    return wire;
  };
  {
    Server srv(o);
    srv.Start();
    REQUIRE(srv.s.Receive(split(4)));
    CHECK(srv.rec.streams[1].path == "/split");
  }
  Server srv(o);
  srv.Start();
  CHECK_FALSE(srv.s.Receive(split(5)));
  CHECK(srv.s.stats().continuation_floods == 1);
  CHECK(srv.rec.streams.count(1) == 0);
}

TEST_CASE("h2 attack: a header block that never ends times out") {
  Options o;
  o.header_block_timeout_ms = 5000;
  Server srv(o);
  srv.Start();
  Hpack hp;
  REQUIRE(srv.s.Receive(Frame(kHeaders, kEndStream, 1, hp.Encode(Get("/")))));  // no END_HEADERS
  CHECK(srv.s.CheckDeadlines() == srv.now + 5000);
  srv.now += 4999;
  CHECK(srv.s.CheckDeadlines() == srv.now + 1);
  CHECK(srv.s.stats().header_block_timeouts == 0);
  srv.now += 1;
  srv.s.CheckDeadlines();
  CHECK(srv.s.stats().header_block_timeouts == 1);
  auto ga = FindFrame(Drain(srv.s), kGoaway);
  REQUIRE(ga);
  CHECK(ga->Code() == ErrorCode::kEnhanceYourCalm);
  CHECK(srv.s.Done());
}

TEST_CASE("h2 attack: an HPACK bomb is reset at the decoded-list limit, the connection lives on") {
  Server srv;
  srv.Start();
  Hpack hp;
  // One 3000-byte field enters the dynamic table (nghttp2's deflater indexes fields up to
  // 3/4 of the table), then 1000 one-byte references to it: about 4 KB on the wire, 3 MB
  // decoded.
  auto fields = Get("/bomb");
  for (int i = 0; i < 1000; ++i)
    fields.emplace_back("x-bomb", std::string(3000, 'a'));
  std::string block = hp.Encode(fields);
  REQUIRE(block.size() < 16384);  // one frame
  REQUIRE(srv.s.Receive(Headers(1, block, true)));
  auto frames = Drain(srv.s);
  auto rst = FindFrame(frames, kRst, 1);
  REQUIRE(rst);
  CHECK(rst->Code() == ErrorCode::kProtocolError);
  CHECK_FALSE(FindFrame(frames, kGoaway));
  CHECK(srv.s.stats().header_list_too_large == 1);
  CHECK(srv.rec.streams[1].heads == 0);
  CHECK(srv.s.stats().max_header_list_seen <= 60 * 1024);

  // HPACK state stayed in step: the next request on the connection decodes.
  REQUIRE(srv.s.Receive(Headers(3, hp.Encode(Get("/after")), true)));
  CHECK(srv.rec.streams[3].path == "/after");
}

TEST_CASE("h2 attack: more than max_headers fields reset the stream") {
  Server srv;
  srv.Start();
  Hpack hp;
  auto fields = Get("/");
  for (int i = 0; i < 101; ++i)
    fields.emplace_back("x-h" + std::to_string(i), "v");
  REQUIRE(srv.s.Receive(Headers(1, hp.Encode(fields), true)));
  CHECK(FindFrame(Drain(srv.s), kRst, 1));
  CHECK(srv.s.stats().too_many_headers == 1);
  CHECK(srv.rec.streams[1].heads == 0);
}

TEST_CASE("h2 attack: a PING flood trips max_outbound_ack, output stays bounded") {
  Server srv;
  srv.Start();
  std::string wire;
  for (int i = 0; i < 10000; ++i)
    wire += Ping(static_cast<uint64_t>(i));
  // Sent in reads of 4 KiB, the server never draining its output (a peer that does not
  // read): ACKs pile up to max_pending_output, then in nghttp2's queue, then GOAWAY.
  bool alive = true;
  for (std::size_t at = 0; at < wire.size() && alive; at += 4096)
    alive = srv.s.Receive(std::string_view(wire).substr(at, 4096));
  CHECK_FALSE(alive);
  CHECK(srv.s.stats().control_floods == 1);
  CHECK(srv.s.PendingOutput().size() <= 64 * 1024 + 17 + 17);  // watermark + a frame + GOAWAY
  // The peer reads at last: the GOAWAY is in what it gets, then nothing more.
  std::vector<RawFrame> all;
  for (int i = 0; i < 1000 && !srv.s.PendingOutput().empty(); ++i)
    for (auto& f : Drain(srv.s))
      all.push_back(f);
  auto ga = FindFrame(all, kGoaway);
  REQUIRE(ga);
  CHECK(ga->Code() == ErrorCode::kEnhanceYourCalm);
  CHECK(all.size() < 3855 + 1000 + 2);  // what the watermark and nghttp2's queue held
  CHECK(srv.s.Done());
}

TEST_CASE("h2 attack: the control-frame bound is the configured one") {
  Options o;
  o.max_outbound_ack = 200;  // nghttp2's default is 1000
  std::string wire;
  for (int i = 0; i < 190; ++i)
    wire += Ping(static_cast<uint64_t>(i));
  {
    Server srv(o);
    srv.Start();
    CHECK(srv.s.Receive(wire));  // under the bound: every PING acknowledged
    CHECK(Drain(srv.s).size() == 190);
  }
  for (int i = 0; i < 400; ++i)
    wire += Ping(static_cast<uint64_t>(i));
  Server srv(o);
  srv.Start();
  CHECK_FALSE(srv.s.Receive(wire));
  CHECK(srv.s.stats().control_floods == 1);
}

TEST_CASE("h2 attack: a SETTINGS flood trips max_outbound_ack") {
  Server srv;
  srv.Start();
  std::string wire;
  for (int i = 0; i < 1500; ++i)
    wire += Settings({{0x4, 65535}});
  CHECK_FALSE(srv.s.Receive(wire));
  CHECK(srv.s.stats().control_floods == 1);
  auto frames = Drain(srv.s);
  CHECK(frames.size() < 1100);  // not one ACK per SETTINGS
}

TEST_CASE("h2 attack: a SETTINGS frame with too many entries closes the connection") {
  Options o;
  o.max_settings = 10;  // nghttp2's default is 32
  Server srv(o);
  srv.Start();
  std::vector<std::pair<uint16_t, uint32_t>> entries;
  for (int i = 0; i < 20; ++i)
    entries.emplace_back(0x4, 65535);
  srv.s.Receive(Settings(entries));
  auto ga = FindFrame(Drain(srv.s), kGoaway);
  REQUIRE(ga);
  CHECK(ga->Code() == ErrorCode::kEnhanceYourCalm);
  CHECK(srv.s.stats().settings_floods == 1);
}

TEST_CASE("h2 attack: a zero window held open resets the stalled stream after stall_timeout") {
  Options o;
  o.stall_timeout_ms = 3000;
  Server srv(o);
  srv.rec.on_end = [&srv](int32_t id, StreamLog&) {
    Head h;
    h.status = 200;
    srv.s.SubmitResponse(id, h, false);
    srv.s.SendData(id, std::string(1000, 'x'), true);
  };
  srv.Start(Settings({{0x4, 0}}));  // SETTINGS_INITIAL_WINDOW_SIZE = 0
  Hpack hp;
  REQUIRE(srv.s.Receive(Headers(1, hp.Encode(Get("/slow")), true)));
  auto frames = Drain(srv.s);
  CHECK(FindFrame(frames, kHeaders, 1));
  CHECK_FALSE(FindFrame(frames, kData, 1));  // no window, no data
  CHECK(srv.s.QueuedBytes(1) == 1000);
  CHECK(srv.s.CheckDeadlines() == srv.now + 3000);
  srv.now += 2999;
  srv.s.CheckDeadlines();
  CHECK(srv.s.stats().stalled_stream_resets == 0);
  srv.now += 1;
  srv.s.CheckDeadlines();
  CHECK(srv.s.stats().stalled_stream_resets == 1);
  auto rst = FindFrame(Drain(srv.s), kRst, 1);
  REQUIRE(rst);
  CHECK(rst->Code() == ErrorCode::kCancel);
  CHECK(srv.rec.streams[1].closed);
  CHECK(srv.s.open_streams() == 0);
  CHECK(srv.s.stats().premature_resets == 0);  // our reset, not the peer's
}

TEST_CASE("h2 attack: a window opened in time clears the stall") {
  Options o;
  o.stall_timeout_ms = 3000;
  Server srv(o);
  srv.rec.on_end = [&srv](int32_t id, StreamLog&) {
    Head h;
    h.status = 200;
    srv.s.SubmitResponse(id, h, false);
    srv.s.SendData(id, std::string(1000, 'x'), true);
  };
  srv.Start(Settings({{0x4, 0}}));
  Hpack hp;
  REQUIRE(srv.s.Receive(Headers(1, hp.Encode(Get("/slow")), true)));
  Drain(srv.s);
  srv.s.CheckDeadlines();
  srv.now += 2000;
  REQUIRE(srv.s.Receive(WindowUpdate(1, 1000)));
  auto frames = Drain(srv.s);
  CHECK(FindFrame(frames, kData, 1));
  srv.now += 5000;
  CHECK(srv.s.CheckDeadlines() == -1);
  CHECK(srv.s.stats().stalled_stream_resets == 0);
}

TEST_CASE("h2 attack: consecutive empty DATA frames close the connection") {
  Server srv;
  srv.Start();
  Hpack hp;
  auto post = Get("/");
  post[0].second = "POST";
  std::string wire = Headers(1, hp.Encode(post), false);
  for (int i = 0; i < 5; ++i)
    wire += Frame(kData, 0, 1, "");
  CHECK_FALSE(srv.s.Receive(wire));
  CHECK(srv.s.stats().empty_frame_floods == 1);
  auto ga = FindFrame(Drain(srv.s), kGoaway);
  REQUIRE(ga);
  CHECK(ga->Code() == ErrorCode::kEnhanceYourCalm);
}

TEST_CASE("h2: malformed requests are reset, never delivered (RFC 9113 §8)") {
  struct Case {
    const char* what;
    std::vector<std::pair<std::string, std::string>> fields;
  };
  auto with = [](std::string n, std::string v) {
    auto f = Get("/");
    f.emplace_back(std::move(n), std::move(v));
    return f;
  };
  std::vector<Case> cases = {
      {"uppercase name", with("X-Upper", "1")},
      {"connection-specific field", with("keep-alive", "timeout=5")},
      {"transfer-encoding", with("transfer-encoding", "chunked")},
      {"te other than trailers", with("te", "gzip")},
      {"Host naming another authority", with("host", "evil.test")},
      {"missing :path", {{":method", "GET"}, {":scheme", "http"}, {":authority", "svc.test"}}},
      {"pseudo-header after a regular field",
       {{":method", "GET"}, {":scheme", "http"}, {"x-a", "1"}, {":path", "/"}}},
      {"unknown pseudo-header", with(":foo", "bar")},
      {"duplicate pseudo-header", with(":path", "/again")},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    Server srv;
    srv.Start();
    Hpack hp;
    REQUIRE(srv.s.Receive(Headers(1, hp.Encode(c.fields), true)));
    auto rst = FindFrame(Drain(srv.s), kRst, 1);
    REQUIRE(rst);
    CHECK(rst->Code() == ErrorCode::kProtocolError);
    CHECK(srv.rec.streams[1].heads == 0);
    CHECK(srv.s.stats().messaging_errors == 1);
  }
  // The accepted forms: te: trailers, a Host equal to :authority, Host alone.
  Server srv;
  srv.Start();
  Hpack hp;
  REQUIRE(srv.s.Receive(Headers(1, hp.Encode(with("te", "trailers")), true)));
  REQUIRE(srv.s.Receive(Headers(3, hp.Encode(with("host", "SVC.test")), true)));
  REQUIRE(srv.s.Receive(Headers(
      5, hp.Encode({{":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {"host", "h.test"}}),
      true)));
  CHECK(srv.rec.streams[1].heads == 1);
  CHECK(srv.rec.streams[3].heads == 1);
  CHECK(srv.rec.streams[5].authority == "h.test");
  CHECK(srv.s.stats().messaging_errors == 0);
}

TEST_CASE("h2: a connection that does not start with the preface is refused") {
  Server srv;
  CHECK_FALSE(srv.s.Receive("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
  CHECK(srv.s.error() != nullptr);
}

// The fuzz target's seeds (tests/fuzz/corpus-h2/: a mode byte, then the frames after the
// preface and SETTINGS) must stay valid, or the campaign starts from nothing. Mode bit 3
// (0x80) seeds are a server's answers to the target's three requests.
TEST_CASE("h2: the fuzz seed corpus holds valid requests and responses") {
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(SLUICE_H2_CORPUS)) {
    INFO(e.path());
    std::ifstream f(e.path(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    REQUIRE(bytes.size() > 1);
    std::string_view frames = std::string_view(bytes).substr(1);
    if (static_cast<uint8_t>(bytes[0]) & 0x80) {
      Recorder rec;
      Session c(Role::kClient, &rec);
      rec.session = &c;
      Head get;
      get.method = "GET";
      get.path = "/";
      get.authority = "svc";
      REQUIRE(c.SubmitRequest(get, true) == 1);
      Head post = get;
      post.method = "POST";
      REQUIRE(c.SubmitRequest(post, false) == 3);
      REQUIRE(c.SendData(3, std::string(70000, 'p'), false));
      REQUIRE(c.SendTrailers(3, {{"x-sum", "1"}}));
      REQUIRE(c.SubmitRequest(get, true) == 5);
      REQUIRE(c.Receive(Settings({})));
      REQUIRE(c.Receive(frames));
      CHECK(rec.streams[1].status == 200);
      CHECK(rec.streams[1].closed);
      CHECK(c.stats().messaging_errors == 0);
    } else {
      Server srv;
      srv.Start();
      REQUIRE(srv.s.Receive(frames));
      REQUIRE(!srv.rec.streams.empty());
      CHECK(srv.rec.streams.begin()->second.heads == 1);
      CHECK(srv.s.stats().messaging_errors == 0);
    }
    ++files;
  }
  CHECK(files >= 3);
}

TEST_CASE("h2: a body that does not match its content-length is reset") {
  Server srv;
  srv.Start();
  Hpack hp;
  auto post = Get("/");
  post[0].second = "POST";
  post.emplace_back("content-length", "10");
  std::string wire = Headers(1, hp.Encode(post), false) + Frame(kData, kEndStream, 1, "12345");
  REQUIRE(srv.s.Receive(wire));
  auto rst = FindFrame(Drain(srv.s), kRst, 1);
  REQUIRE(rst);
  CHECK(rst->Code() == ErrorCode::kProtocolError);
  CHECK(srv.rec.streams[1].heads == 1);
  CHECK_FALSE(srv.rec.streams[1].ended);  // the short body never looked complete
  CHECK(srv.rec.streams[1].closed);
  CHECK(srv.s.stats().messaging_errors == 1);
}
