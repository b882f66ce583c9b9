// HTTP/2 connection over nghttp2 (see h2_session.h for the model and the defences).
// nghttp2 validates the messages (RFC 9113 §8: pseudo-headers, lowercase names, no
// connection-specific fields, te only "trailers", content-length against DATA) with its
// HTTP messaging checks on; this file adds the header list bounds, Host against
// :authority, the premature-reset rule, the deadlines, and turns nghttp2's fatal errors
// into a GOAWAY and a counter.
#include "sluice/proxy/h2_session.h"

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <chrono>
#include <cstring>

namespace sluice::proxy::h2 {

namespace {

bool IEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size())
    return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z')
      x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z')
      y = static_cast<char>(y - 'A' + 'a');
    if (x != y)
      return false;
  }
  return true;
}

// Fields an HTTP/1.1 head may carry that HTTP/2 forbids (RFC 9113 §8.2.2); dropped when
// sending so a translated head is never malformed. "te" is kept only as "trailers".
bool ConnectionSpecific(std::string_view name, std::string_view value) {
  switch (name.size()) {  // by length first: most names are none of these
    case 2:
      return IEquals(name, "te") && !IEquals(value, "trailers");
    case 7:
      return IEquals(name, "upgrade");
    case 10:
      return IEquals(name, "connection") || IEquals(name, "keep-alive");
    case 16:
      return IEquals(name, "proxy-connection");
    case 17:
      return IEquals(name, "transfer-encoding");
    default:
      return false;
  }
}

nghttp2_nv Nv(std::string_view name, std::string_view value) {
  return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(),
                    value.size(), NGHTTP2_NV_FLAG_NONE};
}

// Whether a name has an ASCII capital letter: 8 bytes at a time (every response head
// passes its names through here).
bool HasUpper(std::string_view s) {
  constexpr uint64_t kLow7 = 0x7f7f7f7f7f7f7f7fULL, kHigh = 0x8080808080808080ULL;
  auto upper8 = [](uint64_t x) {
    const uint64_t h = x & kLow7;
    // High bit of a byte: >= 'A' (0x41) and < '[' (0x5b), and ASCII.
    return (h + 0x3f3f3f3f3f3f3f3fULL) & ~(h + 0x2525252525252525ULL) & ~x & kHigh;
  };
  std::size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t x;
    std::memcpy(&x, s.data() + i, 8);
    if (upper8(x))
      return true;
  }
  for (; i < s.size(); ++i) {
    if (s[i] >= 'A' && s[i] <= 'Z')
      return true;
  }
  return false;
}

// Header names go out lowercase; the few that are not are lowered into `scratch`, whose
// strings must outlive the submit call (nghttp2 copies the list there).
void AddFields(const std::vector<Field>& fields, std::vector<nghttp2_nv>* nva,
               std::vector<std::string>* scratch) {
  for (const Field& f : fields) {
    if (f.name.empty() || f.name[0] == ':' || ConnectionSpecific(f.name, f.value))
      continue;
    if (!HasUpper(f.name)) {
      nva->push_back(Nv(f.name, f.value));
      continue;
    }
    if (scratch->capacity() < fields.size())
      scratch->reserve(fields.size());  // before the first: no string moves after
    std::string& low = scratch->emplace_back(f.name);
    for (char& c : low)
      if (c >= 'A' && c <= 'Z')
        c = static_cast<char>(c - 'A' + 'a');
    nva->push_back(Nv(low, f.value));
  }
}

}  // namespace

PrefaceMatch LooksLikeH2Preface(std::string_view bytes) {
  std::size_t n = std::min(bytes.size(), kClientPreface.size());
  if (bytes.substr(0, n) != kClientPreface.substr(0, n))
    return PrefaceMatch::kNo;
  return n == kClientPreface.size() ? PrefaceMatch::kYes : PrefaceMatch::kNeedMore;
}

std::string_view Head::Get(std::string_view name) const {
  for (const Field& f : fields)
    if (IEquals(f.name, name))
      return f.value;
  return {};
}

// One received header block under construction: bytes and offsets (the buffer may grow
// while the block arrives; views are made once it is complete).
struct Block {
  struct Ref {
    uint32_t off = 0, len = 0;
  };
  std::string buf;
  Ref method, scheme, authority, path, protocol, status;
  bool has_authority = false, has_status = false;
  std::vector<std::pair<Ref, Ref>> fields;
  uint64_t list_bytes = 0;
  Head head;

  void Clear() {
    buf.clear();
    fields.clear();
    method = scheme = authority = path = protocol = status = Ref{};
    has_authority = has_status = false;
    list_bytes = 0;
  }
  Ref Add(std::string_view s) {
    Ref r{static_cast<uint32_t>(buf.size()), static_cast<uint32_t>(s.size())};
    buf.append(s);
    return r;
  }
  std::string_view View(Ref r) const { return std::string_view(buf).substr(r.off, r.len); }
  const Head& Build() {
    head.status = 0;
    head.fields.clear();  // keeps its room for the next block
    head.method = View(method);
    head.scheme = View(scheme);
    head.authority = View(authority);
    head.path = View(path);
    head.protocol = View(protocol);
    if (has_status) {
      int st = 0;
      for (char c : View(status))
        st = st * 10 + (c - '0');  // nghttp2 checked: three digits
      head.status = st;
    }
    head.fields.reserve(fields.size());
    for (auto& [n, v] : fields)
      head.fields.push_back({View(n), View(v)});
    return head;
  }
};

struct Session::Scratch {
  std::vector<nghttp2_nv> nva;
  std::vector<std::string> lowered;
};

struct Session::Stream {
  int32_t id = 0;
  int64_t opened_ms = 0;
  Block head, trailers;
  Block* cur = &head;        // the block being received
  bool rejected = false;     // reset for its headers: the rest of the block is ignored
  bool limit_reset = false;  // ... for a header limit (not a malformed message)
  bool got_head = false;     // a final head was delivered (client: a non-1xx one)
  uint64_t unconsumed = 0;
  // Send side.
  std::string queue;
  std::size_t queue_pos = 0;
  bool provider = false;  // a data provider is attached (a body follows the head)
  bool deferred = false;  // its read callback returned DEFERRED
  bool send_end = false;  // the caller's last byte is queued
  bool sent_end = false;
  std::vector<std::string> trailer_kv;  // name, value, name, value...
  bool responded = false;               // a final head was submitted (server)
  bool reset_by_app = false;
  int64_t stalled_since = -1;

  std::size_t queued() const { return queue.size() - queue_pos; }

  // For its next life (Session::NewStream): as new, its buffers' room kept.
  void Reset() {
    id = 0;
    opened_ms = 0;
    head.Clear();
    trailers.Clear();
    cur = &head;
    rejected = limit_reset = got_head = false;
    unconsumed = 0;
    queue.clear();
    queue_pos = 0;
    provider = deferred = send_end = sent_end = false;
    trailer_kv.clear();
    responded = reset_by_app = false;
    stalled_since = -1;
  }
};

std::unique_ptr<Session::Stream> Session::NewStream() {
  if (spare_.empty())
    return std::make_unique<Stream>();
  std::unique_ptr<Stream> st = std::move(spare_.back());
  spare_.pop_back();
  return st;
}

void Session::RecycleStream(std::unique_ptr<Stream> st) {
  // A few are kept (each holds its buffers): as many as streams run at once, usually.
  if (spare_.size() >= 16 || st->queue.capacity() > 64 * 1024 ||
      st->head.buf.capacity() > 16 * 1024)
    return;
  st->Reset();
  spare_.push_back(std::move(st));
}

// nghttp2's callbacks, each a static trampoline into the Session.
struct Callbacks {
  static Session* S(void* ud) { return static_cast<Session*>(ud); }

  // Envoy's max_outbound_frames: frames we owe a peer that does not read (RST_STREAMs for
  // its bad requests, responses) pile up in nghttp2's queue, which bounds only the ACKs
  // among them. Checked on every frame received, valid or not.
  static bool OutboundFlood(nghttp2_session* ng, Session* s) {
    if (nghttp2_session_get_outbound_queue_size(ng) <= s->opt_.max_outbound_frames)
      return false;
    ++s->stats_.outbound_floods;
    s->Fail("outbound frame flood: the peer does not read what it asks for", kEnhanceYourCalm);
    return true;
  }

  static int OnBeginHeaders(nghttp2_session*, const nghttp2_frame* frame, void* ud) {
    Session* s = S(ud);
    if (s->failed_)  // GOAWAY queued: stop reading the rest of the input
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (frame->hd.type != NGHTTP2_HEADERS)
      return 0;
    int32_t id = frame->hd.stream_id;
    s->header_block_since_ = s->Now();
    Session::Stream* st = s->Find(id);
    if (frame->headers.cat == NGHTTP2_HCAT_REQUEST && s->role_ == Role::kServer) {
      std::unique_ptr<Session::Stream> owned = s->NewStream();
      st = owned.get();
      st->id = id;
      st->opened_ms = s->header_block_since_;
      s->streams_.emplace(id, std::move(owned));
      ++s->stats_.streams_opened;
    }
    if (!st)
      return 0;
    // A server's second block is the trailers; a client's blocks are heads (1xx, final)
    // until one came, then trailers.
    st->cur =
        (s->role_ == Role::kServer ? frame->headers.cat != NGHTTP2_HCAT_REQUEST : st->got_head)
            ? &st->trailers
            : &st->head;
    st->cur->Clear();
    return 0;
  }

  static int OnHeader(nghttp2_session* ng, const nghttp2_frame* frame, nghttp2_rcbuf* name,
                      nghttp2_rcbuf* value, uint8_t, void* ud) {
    Session* s = S(ud);
    if (s->failed_)
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    Session::Stream* st = s->Find(frame->hd.stream_id);
    if (!st || st->rejected || frame->hd.type != NGHTTP2_HEADERS)
      return 0;
    nghttp2_vec nv = nghttp2_rcbuf_get_buf(name), vv = nghttp2_rcbuf_get_buf(value);
    std::string_view n(reinterpret_cast<const char*>(nv.base), nv.len);
    std::string_view v(reinterpret_cast<const char*>(vv.base), vv.len);
    Block& b = *st->cur;
    bool pseudo = !n.empty() && n[0] == ':';
    // Counted before anything is kept: a small block that decodes to a huge list (an
    // HPACK bomb) is stopped at the first field over the limit.
    b.list_bytes += n.size() + v.size() + 32;
    bool too_large = b.list_bytes > s->opt_.max_header_list_bytes;
    bool too_many = !too_large && !pseudo && b.fields.size() >= s->opt_.max_headers;
    if (too_large || too_many) {
      ++(too_large ? s->stats_.header_list_too_large : s->stats_.too_many_headers);
      st->rejected = st->limit_reset = true;
      nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_PROTOCOL_ERROR);
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (pseudo) {
      Block::Ref r = b.Add(v);
      if (n == ":method")
        b.method = r;
      else if (n == ":scheme")
        b.scheme = r;
      else if (n == ":authority")
        b.authority = r, b.has_authority = true;
      else if (n == ":path")
        b.path = r;
      else if (n == ":protocol")
        b.protocol = r;
      else if (n == ":status")
        b.status = r, b.has_status = true;
      return 0;
    }
    Block::Ref rn = b.Add(n);
    Block::Ref rv = b.Add(v);
    b.fields.emplace_back(rn, rv);
    return 0;
  }

  static int OnInvalidFrame(nghttp2_session* ng, const nghttp2_frame* frame, int lib_error,
                            void* ud) {
    Session* s = S(ud);
    if (s->failed_ || OutboundFlood(ng, s))
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (lib_error == NGHTTP2_ERR_TOO_MANY_SETTINGS)
      ++s->stats_.settings_floods;
    if (frame->hd.type == NGHTTP2_HEADERS)
      s->header_block_since_ = -1;
    return 0;
  }

  static int OnFrameRecv(nghttp2_session* ng, const nghttp2_frame* frame, void* ud) {
    Session* s = S(ud);
    if (s->failed_)
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (OutboundFlood(ng, s))
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    int32_t id = frame->hd.stream_id;
    bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
    // Envoy's max_consecutive_inbound_frames_with_empty_payload: empty DATA frames that
    // do not end the stream cost the peer nothing and us a frame's work each.
    if (frame->hd.type == NGHTTP2_DATA && frame->hd.length == 0 && !end) {
      if (++s->consecutive_empty_ > s->opt_.max_consecutive_empty_frames) {
        ++s->stats_.empty_frame_floods;
        s->Fail("too many consecutive empty DATA frames", kEnhanceYourCalm);
        return 0;
      }
    } else if (frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) {
      s->consecutive_empty_ = 0;
    }
    switch (frame->hd.type) {
      case NGHTTP2_HEADERS: {
        s->header_block_since_ = -1;
        Session::Stream* st = s->Find(id);
        if (!st || st->rejected)
          return 0;
        Block& b = *st->cur;
        s->stats_.max_header_list_seen = std::max(s->stats_.max_header_list_seen, b.list_bytes);
        if (st->cur == &st->trailers) {
          s->handler_->OnTrailers(id, b.Build());
          return 0;
        }
        const Head& h = b.Build();
        if (s->role_ == Role::kServer) {
          // RFC 9113 §8.3.1: a Host that names another entity than :authority makes the
          // request malformed; without :authority, Host is the authority.
          std::string_view host = h.Get("host");
          if (b.has_authority && !host.empty() && !IEquals(host, h.authority)) {
            st->rejected = true;
            nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_PROTOCOL_ERROR);
            return 0;
          }
          if (!b.has_authority)
            b.head.authority = host;
          st->got_head = true;
        } else if (h.status >= 200) {
          st->got_head = true;
        }
        s->handler_->OnHead(id, h, end);
        return 0;
      }
      case NGHTTP2_DATA: {
        Session::Stream* st = s->Find(id);
        if (st && end && !st->rejected)
          s->handler_->OnData(id, {}, true);
        return 0;
      }
      case NGHTTP2_RST_STREAM:
        ++s->stats_.resets_received;
        return 0;
      // Frames that cost the peer little and us work, bounded as Envoy bounds them:
      // PRIORITY by max_inbound_priority_frames_per_stream x (1 + streams opened),
      // WINDOW_UPDATE by 1 + 2 x (streams opened + max_inbound_window_update_frames_per_
      // data_frame_sent x DATA frames we sent).
      case NGHTTP2_PRIORITY:
        if (++s->priority_frames_ >
            uint64_t{s->opt_.max_priority_frames_per_stream} * (1 + s->stats_.streams_opened)) {
          ++s->stats_.priority_floods;
          s->Fail("PRIORITY flood", kEnhanceYourCalm);
        }
        return 0;
      case NGHTTP2_WINDOW_UPDATE:
        if (++s->window_update_frames_ >
            1 + 2 * (s->stats_.streams_opened +
                     uint64_t{s->opt_.max_window_updates_per_data_frame} * s->data_frames_sent_)) {
          ++s->stats_.window_update_floods;
          s->Fail("WINDOW_UPDATE flood", kEnhanceYourCalm);
        }
        return 0;
      case NGHTTP2_GOAWAY:
        ++s->stats_.goaways_received;
        s->goaway_received_ = true;
        s->handler_->OnGoaway(frame->goaway.error_code, frame->goaway.last_stream_id);
        return 0;
      default:
        return 0;
    }
  }

  static int OnDataChunk(nghttp2_session* ng, uint8_t, int32_t id, const uint8_t* data, size_t len,
                         void* ud) {
    Session* s = S(ud);
    Session::Stream* st = s->Find(id);
    if (!st || st->rejected || s->failed_) {
      nghttp2_session_consume(ng, id, len);  // nobody will: give the window back
      return 0;
    }
    st->unconsumed += len;
    s->handler_->OnData(id, std::string_view(reinterpret_cast<const char*>(data), len), false);
    return 0;
  }

  static int OnStreamClose(nghttp2_session*, int32_t id, uint32_t code, void* ud) {
    S(ud)->OnStreamClosed(id, code);
    return 0;
  }

  static int OnFrameSend(nghttp2_session*, const nghttp2_frame* frame, void* ud) {
    Session* s = S(ud);
    if (frame->hd.type == NGHTTP2_GOAWAY) {
      ++s->stats_.goaways_sent;
      if (frame->goaway.error_code != NGHTTP2_NO_ERROR && !s->failed_) {
        // A connection error nghttp2 found itself; its debug data says which.
        s->failed_ = true;
        s->error_.assign(reinterpret_cast<const char*>(frame->goaway.opaque_data),
                         frame->goaway.opaque_data_len);
        if (s->error_.find("too many setting entries") != std::string::npos)
          ++s->stats_.settings_floods;
        if (s->error_.empty())
          s->error_ = "connection error (GOAWAY sent)";
      }
    }
    if (frame->hd.type == NGHTTP2_DATA)
      ++s->data_frames_sent_;
    if (frame->hd.type == NGHTTP2_RST_STREAM) {
      ++s->stats_.resets_sent;
      if (frame->rst_stream.error_code == NGHTTP2_REFUSED_STREAM)
        ++s->stats_.refused_streams;
      // A malformed message, whoever found it (nghttp2's checks, ours), is reset with
      // PROTOCOL_ERROR; the limits have counters of their own.
      Session::Stream* st = s->Find(frame->hd.stream_id);
      if (frame->rst_stream.error_code == NGHTTP2_PROTOCOL_ERROR &&
          (!st || (!st->limit_reset && !st->reset_by_app)))
        ++s->stats_.messaging_errors;
    }
    return 0;
  }

  static ssize_t ReadBody(nghttp2_session* ng, int32_t id, uint8_t* buf, size_t length,
                          uint32_t* flags, nghttp2_data_source*, void* ud) {
    Session* s = S(ud);
    Session::Stream* st = s->Find(id);
    if (!st)
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    std::size_t n = std::min(length, st->queued());
    if (n) {
      std::memcpy(buf, st->queue.data() + st->queue_pos, n);
      st->queue_pos += n;
      if (st->queue_pos == st->queue.size()) {
        st->queue.clear();
        st->queue_pos = 0;
      } else if (st->queue_pos > 64 * 1024 && st->queue_pos * 2 > st->queue.size()) {
        st->queue.erase(0, st->queue_pos);
        st->queue_pos = 0;
      }
    }
    if (st->queued() == 0 && st->send_end) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      st->sent_end = true;
      if (!st->trailer_kv.empty()) {
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        std::vector<nghttp2_nv> nva;
        for (std::size_t i = 0; i + 1 < st->trailer_kv.size(); i += 2)
          nva.push_back(Nv(st->trailer_kv[i], st->trailer_kv[i + 1]));
        nghttp2_submit_trailer(ng, id, nva.data(), nva.size());
      }
      return static_cast<ssize_t>(n);
    }
    if (n == 0) {
      st->deferred = true;
      return NGHTTP2_ERR_DEFERRED;
    }
    return static_cast<ssize_t>(n);
  }
};

Session::Session(Role role, Handler* handler, Options options)
    : role_(role),
      handler_(handler),
      opt_(std::move(options)),
      scratch_(std::make_unique<Scratch>()) {
  nghttp2_session_callbacks* cb = nullptr;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, &Callbacks::OnBeginHeaders);
  nghttp2_session_callbacks_set_on_header_callback2(cb, &Callbacks::OnHeader);
  nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, &Callbacks::OnInvalidFrame);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, &Callbacks::OnFrameRecv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, &Callbacks::OnDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, &Callbacks::OnStreamClose);
  nghttp2_session_callbacks_set_on_frame_send_callback(cb, &Callbacks::OnFrameSend);

  nghttp2_option* o = nullptr;
  nghttp2_option_new(&o);
  nghttp2_option_set_no_auto_window_update(o, 1);
  nghttp2_option_set_max_outbound_ack(o, opt_.max_outbound_ack);
  nghttp2_option_set_max_settings(o, opt_.max_settings);
  nghttp2_option_set_max_continuations(o, opt_.max_continuations);
  nghttp2_option_set_max_deflate_dynamic_table_size(o, opt_.hpack_table_size);
  nghttp2_option_set_no_closed_streams(o, 1);
  if (role_ == Role::kServer)
    nghttp2_option_set_stream_reset_rate_limit(o, opt_.reset_burst, opt_.reset_rate_per_s);
  if (role_ == Role::kServer)
    nghttp2_session_server_new2(&ng_, cb, this, o);
  else
    nghttp2_session_client_new2(&ng_, cb, this, o);
  nghttp2_option_del(o);
  nghttp2_session_callbacks_del(cb);

  nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, opt_.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, opt_.initial_stream_window},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, opt_.max_header_list_bytes},
      {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, opt_.hpack_table_size},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
  };
  // A server may not send ENABLE_PUSH (RFC 9113 §6.5.2 allows only 0 or 1 from clients;
  // nghttp2 refuses it from a server).
  std::size_t n = role_ == Role::kServer ? 4 : 5;
  nghttp2_submit_settings(ng_, NGHTTP2_FLAG_NONE, settings, n);
  if (opt_.initial_connection_window > 65535)
    nghttp2_session_set_local_window_size(ng_, NGHTTP2_FLAG_NONE, 0,
                                          static_cast<int32_t>(opt_.initial_connection_window));
  Flush();
}

Session::~Session() {
  nghttp2_session_del(ng_);
}

int64_t Session::Now() const {
  if (opt_.now_ms)
    return opt_.now_ms();
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Session::Stream* Session::Find(int32_t id) const {
  auto it = streams_.find(id);
  return it == streams_.end() ? nullptr : it->second.get();
}

bool Session::Receive(std::string_view bytes) {
  if (failed_)
    return false;
  busy_ = true;
  ssize_t rv =
      nghttp2_session_mem_recv(ng_, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  busy_ = false;
  if (rv < 0) {
    switch (rv) {
      case NGHTTP2_ERR_FLOODED:
        ++stats_.control_floods;
        Fail("control frame flood: SETTINGS/PING acknowledgements piling up", kEnhanceYourCalm);
        break;
      case NGHTTP2_ERR_TOO_MANY_CONTINUATIONS:
        ++stats_.continuation_floods;
        Fail("CONTINUATION flood", kEnhanceYourCalm);
        break;
      case NGHTTP2_ERR_BAD_CLIENT_MAGIC:
        Fail("not an HTTP/2 client preface", kProtocolError);
        break;
      default:
        Fail(nghttp2_strerror(static_cast<int>(rv)), kProtocolError);
        break;
    }
  }
  Flush();  // nghttp2 ends the session itself on some errors: OnFrameSend sees its GOAWAY
  return !failed_;
}

void Session::ReceiveEof() {
  std::vector<int32_t> ids;
  for (auto& [id, s] : streams_)
    ids.push_back(id);
  for (int32_t id : ids)
    OnStreamClosed(id, kCancel);
  if (!failed_) {
    failed_ = true;
    error_ = "peer closed the connection";
  }
}

void Session::Flush() {
  if (busy_)  // inside nghttp2 (a callback): the outer call flushes
    return;
  busy_ = true;
  if (out_pos_ == out_.size()) {
    out_.clear();
    out_pos_ = 0;
  }
  while (out_.size() - out_pos_ < opt_.max_pending_output) {
    const uint8_t* p = nullptr;
    ssize_t n = nghttp2_session_mem_send(ng_, &p);
    if (n <= 0) {
      if (n < 0 && !failed_) {
        failed_ = true;
        error_ = nghttp2_strerror(static_cast<int>(n));
      }
      break;
    }
    out_.append(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n));
  }
  busy_ = false;
}

// The stall clock starts when a stream is seen with body queued and no window: on each
// look at the output (PendingOutput) and at CheckDeadlines.
void Session::UpdateStallClocks() {
  int64_t now = -1;
  for (auto& [id, st] : streams_) {
    bool waiting = st->provider && !st->sent_end && (st->queued() > 0 || st->send_end);
    if (!waiting) {
      st->stalled_since = -1;
      continue;
    }
    int32_t win = std::min(nghttp2_session_get_stream_remote_window_size(ng_, id),
                           nghttp2_session_get_remote_window_size(ng_));
    if (win > 0) {
      st->stalled_since = -1;
    } else if (st->stalled_since < 0) {
      if (now < 0)
        now = Now();
      st->stalled_since = now;
    }
  }
}

std::string_view Session::PendingOutput() {
  Flush();
  UpdateStallClocks();
  return std::string_view(out_).substr(out_pos_);
}

void Session::ConsumeOutput(std::size_t n) {
  out_pos_ = std::min(out_.size(), out_pos_ + n);
}

void Session::Consume(int32_t stream, std::size_t n) {
  Stream* st = Find(stream);
  if (!st)
    return;  // closed: its unconsumed bytes went back then
  n = std::min<uint64_t>(n, st->unconsumed);
  st->unconsumed -= n;
  nghttp2_session_consume(ng_, stream, n);
}

void Session::Fail(const char* why, uint32_t code) {
  if (failed_)
    return;
  failed_ = true;
  error_ = why;
  nghttp2_session_terminate_session(ng_, code);
  Flush();
}

void Session::OnStreamClosed(int32_t id, uint32_t code) {
  auto it = streams_.find(id);
  if (it == streams_.end())
    return;
  std::unique_ptr<Stream> st = std::move(it->second);
  streams_.erase(it);
  ++stats_.streams_closed;
  // Bytes delivered and never consumed would shrink the connection window for good.
  if (st->unconsumed)
    nghttp2_session_consume_connection(ng_, st->unconsumed);
  handler_->OnStreamClose(id, code);
  const bool counted = role_ == Role::kServer && !st->reset_by_app;
  const int64_t opened_ms = st->opened_ms;
  RecycleStream(std::move(st));
  if (!counted)
    return;
  ++closed_counted_;
  if (code != NGHTTP2_NO_ERROR && Now() - opened_ms < opt_.min_stream_lifetime_ms)
    ++stats_.premature_resets;
  CheckPrematureResets();
}

// Envoy's rule (overload.premature_reset_*): once premature_reset_total_streams streams
// have closed, GOAWAY if half or more were reset prematurely; before that, once the
// premature ones alone reach half that number.
void Session::CheckPrematureResets() {
  uint64_t limit = opt_.premature_reset_total_streams;
  uint64_t premature = stats_.premature_resets;
  if (closed_counted_ < limit ? premature * 2 < limit : premature * 2 < closed_counted_)
    return;
  if (failed_)
    return;
  ++stats_.rapid_reset_goaways;
  Fail("rapid reset: too many streams reset before their minimum lifetime", kEnhanceYourCalm);
}

bool Session::SubmitResponse(int32_t stream, const Head& head, bool end_stream) {
  Stream* st = Find(stream);
  // One final head per stream; no 101 in HTTP/2 (RFC 9113 §8.6).
  if (!st || st->rejected || st->responded || role_ != Role::kServer || failed_ ||
      head.status == 101)
    return false;
  char status[4];
  int code = std::clamp(head.status, 100, 999);
  status[0] = static_cast<char>('0' + code / 100);
  status[1] = static_cast<char>('0' + code / 10 % 10);
  status[2] = static_cast<char>('0' + code % 10);
  std::vector<nghttp2_nv>& nva = scratch_->nva;
  nva.clear();
  scratch_->lowered.clear();
  nva.push_back(Nv(":status", std::string_view(status, 3)));
  AddFields(head.fields, &nva, &scratch_->lowered);
  nghttp2_data_provider prd{};
  prd.read_callback = &Callbacks::ReadBody;
  bool interim = code < 200;
  int rv;
  if (interim) {
    rv = nghttp2_submit_headers(ng_, NGHTTP2_FLAG_NONE, stream, nullptr, nva.data(), nva.size(),
                                nullptr);
  } else {
    st->responded = true;
    st->provider = !end_stream;
    rv = nghttp2_submit_response(ng_, stream, nva.data(), nva.size(), end_stream ? nullptr : &prd);
    st->sent_end = end_stream;
  }
  return rv == 0;
}

int32_t Session::SubmitRequest(const Head& head, bool end_stream) {
  if (role_ != Role::kClient || !CanOpenStream())
    return -1;
  std::vector<nghttp2_nv> nva;
  std::vector<std::string> scratch;
  nva.push_back(Nv(":method", head.method));
  nva.push_back(Nv(":scheme", head.scheme.empty() ? "http" : head.scheme));
  if (!head.authority.empty())
    nva.push_back(Nv(":authority", head.authority));
  if (head.method != "CONNECT" || !head.protocol.empty())
    nva.push_back(Nv(":path", head.path.empty() ? "/" : head.path));
  if (!head.protocol.empty())
    nva.push_back(Nv(":protocol", head.protocol));
  std::vector<Field> fields;
  fields.reserve(head.fields.size());
  for (const Field& f : head.fields)
    if (!IEquals(f.name, "host"))  // :authority carries it (RFC 9113 §8.3.1)
      fields.push_back(f);
  AddFields(fields, &nva, &scratch);
  nghttp2_data_provider prd{};
  prd.read_callback = &Callbacks::ReadBody;
  int32_t id = nghttp2_submit_request(ng_, nullptr, nva.data(), nva.size(),
                                      end_stream ? nullptr : &prd, nullptr);
  if (id < 0)
    return -1;
  std::unique_ptr<Stream> owned = NewStream();
  owned->id = id;
  owned->opened_ms = Now();
  owned->provider = !end_stream;
  owned->sent_end = end_stream;
  streams_.emplace(id, std::move(owned));
  ++stats_.streams_opened;
  return id;
}

bool Session::CanOpenStream() const {
  if (role_ != Role::kClient || failed_ || goaway_received_ ||
      !nghttp2_session_check_request_allowed(ng_))
    return false;
  uint32_t max = nghttp2_session_get_remote_settings(ng_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
  return streams_.size() < max;
}

bool Session::ResumeData(Stream* st) {
  if (!st->deferred)
    return true;
  st->deferred = false;
  return nghttp2_session_resume_data(ng_, st->id) == 0;
}

bool Session::SendData(int32_t stream, std::string_view data, bool end_stream) {
  Stream* st = Find(stream);
  if (!st || !st->provider || st->send_end || failed_)
    return false;
  // Bytes queued before and not framed yet go out first, in frames of their own (one
  // DATA frame per call while the windows allow, as each chunk of a chunked response).
  if (st->queued() > 0)
    Flush();
  st->queue.append(data);
  st->send_end = end_stream;
  return ResumeData(st);
}

bool Session::SendTrailers(int32_t stream, const std::vector<Field>& trailers) {
  Stream* st = Find(stream);
  if (!st || !st->provider || st->send_end || failed_)
    return false;
  std::vector<nghttp2_nv> nva;
  std::vector<std::string> scratch;
  AddFields(trailers, &nva, &scratch);
  for (const nghttp2_nv& nv : nva) {
    st->trailer_kv.emplace_back(reinterpret_cast<const char*>(nv.name), nv.namelen);
    st->trailer_kv.emplace_back(reinterpret_cast<const char*>(nv.value), nv.valuelen);
  }
  st->send_end = true;
  return ResumeData(st);
}

std::size_t Session::QueuedBytes(int32_t stream) const {
  Stream* st = Find(stream);
  return st ? st->queued() : 0;
}

bool Session::ResetStream(int32_t stream, uint32_t error_code) {
  Stream* st = Find(stream);
  if (!st)
    return false;
  st->reset_by_app = true;
  Flush();  // what was submitted on the stream before (a head, body) goes out before the reset
  return nghttp2_submit_rst_stream(ng_, NGHTTP2_FLAG_NONE, stream, error_code) == 0;
}

void Session::GracefulShutdown() {
  if (failed_)
    return;
  int32_t last = role_ == Role::kServer ? nghttp2_session_get_last_proc_stream_id(ng_) : 0;
  Flush();  // frames submitted before go out before the GOAWAY, as they did
  nghttp2_submit_goaway(ng_, NGHTTP2_FLAG_NONE, last, NGHTTP2_NO_ERROR, nullptr, 0);
}

void Session::Terminate(uint32_t error_code) {
  Flush();  // frames submitted before go out ahead of the GOAWAY, as they did
  Fail("terminated", error_code);
}

int64_t Session::CheckDeadlines() {
  if (failed_)
    return -1;
  int64_t now = Now();
  int64_t next = -1;
  auto earliest = [&next](int64_t t) { next = next < 0 ? t : std::min(next, t); };
  if (header_block_since_ >= 0) {
    if (now - header_block_since_ >= opt_.header_block_timeout_ms) {
      ++stats_.header_block_timeouts;
      Fail("header block not finished in time", kEnhanceYourCalm);
      return -1;
    }
    earliest(header_block_since_ + opt_.header_block_timeout_ms);
  }
  Flush();
  UpdateStallClocks();
  std::vector<int32_t> expired;
  for (auto& [id, st] : streams_) {
    if (st->stalled_since < 0)
      continue;
    if (now - st->stalled_since >= opt_.stall_timeout_ms)
      expired.push_back(id);
    else
      earliest(st->stalled_since + opt_.stall_timeout_ms);
  }
  for (int32_t id : expired) {
    ++stats_.stalled_stream_resets;
    Find(id)->stalled_since = -1;
    ResetStream(id, kCancel);
  }
  return next;
}

bool Session::Done() const {
  if (out_pos_ < out_.size())
    return false;
  if (nghttp2_session_want_write(ng_) && !failed_)
    return false;
  return failed_ || !nghttp2_session_want_read(ng_);
}

}  // namespace sluice::proxy::h2
