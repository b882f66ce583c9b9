// libFuzzer target for the HTTP/2 connection layer (agent/proxy/h2_session.cc), mostly in
// the server role: the input follows a valid client preface and SETTINGS, so the fuzzer
// starts past the preface check; its first byte picks how the rest is cut into reads and
// the handler's behaviour (mode bit 3: the client role instead, three requests open and
// the input read as the server's frames after its SETTINGS). The handler
// answers requests (head, body, trailers), consumes or holds body bytes, resets some
// streams; a fake clock moves on every read and CheckDeadlines runs, so the time bounds
// are exercised too. Beyond ASan/UBSan, it checks the bounds the layer promises: no
// decoded header list kept over the limit, pending output bounded, every stream's events
// in order, no stream open past the concurrency limit.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>

#include "sluice/proxy/h2_session.h"

namespace h2 = sluice::proxy::h2;

namespace {

void Check(bool ok) {
  if (!ok)
    std::abort();
}

struct App : h2::Handler {
  h2::Session* s = nullptr;
  uint8_t mode = 0;
  struct State {
    bool head = false, ended = false, closed = false;
    std::size_t held = 0;
  };
  std::map<int32_t, State> streams;

  bool client = false;

  void OnHead(int32_t id, const h2::Head& h, bool end) override {
    State& st = streams[id];
    Check(!st.closed && !st.ended);
    if (client)
      Check(h.status >= 100 && h.status <= 999);
    else
      Check(!h.method.empty() && (h.method == "CONNECT" || !h.path.empty()));
    for (const auto& f : h.fields)
      for (char c : f.name)
        Check(!(c >= 'A' && c <= 'Z'));
    st.head = true;
    if (end)
      Answer(id, st);
  }
  void OnData(int32_t id, std::string_view data, bool end) override {
    State& st = streams[id];
    Check(st.head && !st.closed && !st.ended);
    st.held += data.size();
    if (!(mode & 1)) {  // mode bit 0: hold body bytes (the window stays shut)
      s->Consume(id, st.held);
      st.held = 0;
    }
    if (end)
      Answer(id, st);
  }
  void OnTrailers(int32_t id, const h2::Head&) override {
    State& st = streams[id];
    Check(st.head && !st.closed && !st.ended);
    Answer(id, st);
  }
  void OnStreamClose(int32_t id, uint32_t) override {
    State& st = streams[id];
    Check(!st.closed);
    st.closed = true;
  }
  void Answer(int32_t id, State& st) {
    st.ended = true;
    if (client)
      return;
    if (mode & 2) {  // mode bit 1: refuse
      s->ResetStream(id, h2::kRefusedStream);
      return;
    }
    h2::Head h;
    h.status = 200;
    h.fields = {{"content-type", "text/plain"}};
    s->SubmitResponse(id, h, false);
    s->SendData(id, std::string(static_cast<std::size_t>(id % 7) * 4000, 'x'), false);
    s->SendTrailers(id, {{"grpc-status", "0"}});
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1)
    return 0;
  int64_t now = 0;
  h2::Options opt;
  opt.max_concurrent_streams = 16;
  opt.premature_reset_total_streams = 20;
  opt.header_block_timeout_ms = 50;
  opt.stall_timeout_ms = 50;
  opt.now_ms = [&now] { return now; };
  App app;
  app.mode = data[0] >> 4;
  app.client = app.mode & 8;
  h2::Session s(app.client ? h2::Role::kClient : h2::Role::kServer, &app, opt);
  app.s = &s;
  std::size_t step = 1 + (data[0] & 0x0f) * 97;
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);

  // Client role: requests open (stream 1 GET, 3 POST with body and trailers, 5 GET), then
  // the server's empty SETTINGS. Server role: the preface and an empty SETTINGS.
  std::string start;
  if (app.client) {
    h2::Head get;
    get.method = "GET";
    get.path = "/";
    get.authority = "svc";
    Check(s.SubmitRequest(get, true) == 1);
    h2::Head post = get;
    post.method = "POST";
    Check(s.SubmitRequest(post, false) == 3);
    Check(s.SendData(3, std::string(70000, 'p'), false));
    Check(s.SendTrailers(3, {{"x-sum", "1"}}));
    Check(s.SubmitRequest(get, true) == 5);
    s.ConsumeOutput(s.PendingOutput().size());
  } else {
    start.assign(h2::kClientPreface);
  }
  start.append("\0\0\0\4\0\0\0\0\0", 9);
  Check(s.Receive(start));
  while (!in.empty()) {
    std::string_view chunk = in.substr(0, step);
    in.remove_prefix(chunk.size());
    bool alive = s.Receive(chunk);
    now += 10;
    s.CheckDeadlines();
    std::string_view out = s.PendingOutput();
    Check(out.size() <= opt.max_pending_output + 64 * 1024);
    if (!(app.mode & 4))  // mode bit 2: a peer that does not read
      s.ConsumeOutput(out.size());
    Check(s.stats().max_header_list_seen <= opt.max_header_list_bytes);
    Check(s.open_streams() <= opt.max_concurrent_streams + 1);
    if (!alive)
      break;
  }
  s.ReceiveEof();
  Check(s.open_streams() == 0);
  return 0;
}
