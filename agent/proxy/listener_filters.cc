// tls_inspector and http_inspector over a connection's first bytes (see
// listener_filters.h). The ClientHello reader follows RFC 8446 section 4.1.2 and the
// server_name (RFC 6066) and ALPN (RFC 7301) extensions; one handshake record, as
// nearly every client sends it.
#include "sluice/proxy/listener_filters.h"

#include <algorithm>
#include <array>
#include <cstdint>

#include "sluice/proxy/tls_sni.h"

namespace sluice::proxy {
namespace {

struct Reader {
  const unsigned char* p;
  std::size_t n;
  bool ok = true;
  uint32_t Take(std::size_t k) {
    if (!ok || n < k) {
      ok = false;
      return 0;
    }
    uint32_t v = 0;
    for (std::size_t i = 0; i < k; ++i)
      v = (v << 8) | p[i];
    p += k;
    n -= k;
    return v;
  }
  Reader Sub(std::size_t k) {
    if (!ok || n < k) {
      ok = false;
      return Reader{p, 0, false};
    }
    Reader r{p, k};
    p += k;
    n -= k;
    return r;
  }
  std::string_view View() const { return {reinterpret_cast<const char*>(p), n}; }
};

constexpr std::size_t kMaxHello = 16384 + 2048;  // one record and its expansion

// Envoy's http_inspector knows these HTTP/1 methods; a request line with another is
// not taken for HTTP.
constexpr std::array<std::string_view, 34> kMethods = {
    "ACL",      "BIND",      "CHECKOUT", "CONNECT", "COPY",       "DELETE",     "GET",
    "HEAD",     "LINK",      "LOCK",     "MERGE",   "MKACTIVITY", "MKCALENDAR", "MKCOL",
    "MOVE",     "MSEARCH",   "M-SEARCH", "NOTIFY",  "OPTIONS",    "PATCH",      "POST",
    "PROPFIND", "PROPPATCH", "PURGE",    "PUT",     "REBIND",     "REPORT",     "SEARCH",
    "SOURCE",   "SUBSCRIBE", "TRACE",    "UNBIND",  "UNLINK",     "UNLOCK"};

constexpr std::string_view kH2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

char Lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
}

}  // namespace

Inspect InspectTls(std::string_view buf, TlsHello* out) {
  *out = {};
  if (buf.empty())
    return Inspect::kNeedMore;
  const auto* u = reinterpret_cast<const unsigned char*>(buf.data());
  // A handshake record (22) of TLS 1.x (3.x) holding a ClientHello (1).
  if (u[0] != 22 || (buf.size() >= 2 && u[1] != 3))
    return Inspect::kDone;
  if (buf.size() < 6)
    return Inspect::kNeedMore;
  const std::size_t rec_len = (static_cast<std::size_t>(u[3]) << 8) | u[4];
  if (rec_len == 0 || rec_len > kMaxHello || u[5] != 1)
    return Inspect::kDone;
  if (buf.size() < 5 + rec_len)
    return Inspect::kNeedMore;
  Reader rec{u + 5, rec_len};
  rec.Take(1);
  const uint32_t hs_len = rec.Take(3);
  if (!rec.ok || hs_len > rec.n)
    return Inspect::kDone;  // a hello over several records: not read (as not TLS)
  Reader h = rec.Sub(hs_len);
  h.Take(2);         // legacy_version
  h.Take(32);        // random
  h.Sub(h.Take(1));  // session id
  h.Sub(h.Take(2));  // cipher suites
  h.Sub(h.Take(1));  // compression methods
  if (!h.ok)
    return Inspect::kDone;
  TlsHello hello;
  hello.tls = true;
  if (h.n > 0) {
    Reader ext = h.Sub(h.Take(2));
    while (ext.ok && ext.n > 0) {
      const uint32_t type = ext.Take(2);
      Reader body = ext.Sub(ext.Take(2));
      if (!ext.ok)
        return Inspect::kDone;
      if (type == 0) {  // server_name
        Reader list = body.Sub(body.Take(2));
        while (list.ok && list.n > 0) {
          const uint32_t name_type = list.Take(1);
          Reader name = list.Sub(list.Take(2));
          if (list.ok && name_type == 0 && hello.server_name.empty()) {
            for (char c : name.View())
              hello.server_name.push_back(Lower(c));
          }
        }
        if (!list.ok)
          return Inspect::kDone;
      } else if (type == 16) {  // application_layer_protocol_negotiation
        Reader list = body.Sub(body.Take(2));
        while (list.ok && list.n > 0) {
          Reader proto = list.Sub(list.Take(1));
          // An empty name is not a protocol (RFC 7301 forbids it) and matches no
          // application_protocols entry: left out.
          if (list.ok && proto.n > 0)
            hello.alpn.emplace_back(proto.View());
        }
        if (!list.ok)
          return Inspect::kDone;
      }
    }
    if (!ext.ok)
      return Inspect::kDone;
  }
  *out = std::move(hello);
  return Inspect::kDone;
}

SniStatus ParseClientHelloSni(std::string_view buf, std::string_view* sni) {
  TlsHello hello;
  if (InspectTls(buf, &hello) == Inspect::kNeedMore)
    return SniStatus::kNeedMore;
  if (!hello.tls)
    return SniStatus::kNotTls;
  if (hello.server_name.empty())
    return SniStatus::kNoSni;
  // A view into buf, as before: find the name's bytes (it was lower-cased on the copy).
  for (std::size_t i = 0; i + hello.server_name.size() <= buf.size(); ++i) {
    bool same = true;
    for (std::size_t k = 0; k < hello.server_name.size() && same; ++k)
      same = Lower(buf[i + k]) == hello.server_name[k];
    if (same) {
      *sni = buf.substr(i, hello.server_name.size());
      return SniStatus::kFound;
    }
  }
  return SniStatus::kNoSni;
}

Inspect InspectHttp(std::string_view buf, std::string* protocol) {
  protocol->clear();
  // The HTTP/2 preface, or as much of it as is here.
  const std::size_t pn = std::min(buf.size(), kH2Preface.size());
  if (buf.substr(0, pn) == kH2Preface.substr(0, pn)) {
    if (pn < kH2Preface.size())
      return Inspect::kNeedMore;
    *protocol = "h2c";
    return Inspect::kDone;
  }
  // METHOD SP request-target SP HTTP/1.x CRLF
  const std::size_t sp = buf.find(' ');
  const std::string_view method = buf.substr(0, sp);
  bool method_prefix = false;
  for (std::string_view m : kMethods) {
    if (sp != std::string_view::npos ? m == method : m.starts_with(method)) {
      method_prefix = true;
      break;
    }
  }
  if (!method_prefix)
    return Inspect::kDone;
  const std::size_t eol = buf.find("\r\n");
  if (eol == std::string_view::npos)
    return buf.size() < 64 * 1024 ? Inspect::kNeedMore : Inspect::kDone;
  const std::string_view line = buf.substr(0, eol);
  const std::size_t last = line.rfind(' ');
  if (sp == std::string_view::npos || last == sp)
    return Inspect::kDone;
  const std::string_view version = line.substr(last + 1);
  if (version == "HTTP/1.1")
    *protocol = "http/1.1";
  else if (version == "HTTP/1.0")
    *protocol = "http/1.0";
  return Inspect::kDone;
}

}  // namespace sluice::proxy
