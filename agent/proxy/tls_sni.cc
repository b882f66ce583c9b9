#include "sluice/proxy/tls_sni.h"

#include <cstdint>

namespace sluice::proxy {
namespace {

struct Reader {
  const unsigned char* p;
  std::size_t n;
  bool ok = true;
  uint32_t U8() { return Take(1); }
  uint32_t U16() { return Take(2); }
  uint32_t U24() { return Take(3); }
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
};

}  // namespace

SniStatus ParseClientHelloSni(std::string_view buf, std::string_view* sni) {
  // TLS record: type 22 (handshake), version 3.x, length. A ClientHello may span
  // several records; we support the (overwhelmingly common) single-record case up to
  // the record size limit and refuse the rest as not-TLS-we-understand.
  if (buf.empty())
    return SniStatus::kNeedMore;
  const auto* u = reinterpret_cast<const unsigned char*>(buf.data());
  if (u[0] != 22)
    return SniStatus::kNotTls;
  if (buf.size() < 5)
    return SniStatus::kNeedMore;
  if (u[1] != 3)
    return SniStatus::kNotTls;
  std::size_t rec_len = (static_cast<std::size_t>(u[3]) << 8) | u[4];
  if (rec_len == 0 || rec_len > 16384 + 2048)
    return SniStatus::kNotTls;
  if (buf.size() < 5 + rec_len)
    return SniStatus::kNeedMore;
  Reader rec{u + 5, rec_len};
  if (rec.U8() != 1)
    return SniStatus::kNotTls;  // ClientHello
  uint32_t hs_len = rec.U24();
  if (!rec.ok || hs_len > rec.n)
    return SniStatus::kNotTls;  // fragmented hello
  Reader h = rec.Sub(hs_len);
  h.U16();         // legacy_version
  h.Take(32);      // random
  h.Sub(h.U8());   // session id
  h.Sub(h.U16());  // cipher suites
  h.Sub(h.U8());   // compression methods
  if (!h.ok)
    return SniStatus::kNotTls;
  if (h.n == 0)
    return SniStatus::kNoSni;  // no extensions
  Reader ext = h.Sub(h.U16());
  if (!h.ok)
    return SniStatus::kNotTls;
  while (ext.ok && ext.n > 0) {
    uint32_t type = ext.U16();
    Reader body = ext.Sub(ext.U16());
    if (!ext.ok)
      return SniStatus::kNotTls;
    if (type != 0)
      continue;  // server_name
    Reader list = body.Sub(body.U16());
    while (list.ok && list.n > 0) {
      uint32_t name_type = list.U8();
      uint32_t len = list.U16();
      Reader name = list.Sub(len);
      if (!list.ok)
        return SniStatus::kNotTls;
      if (name_type == 0 && len > 0) {
        *sni = std::string_view(reinterpret_cast<const char*>(name.p), len);
        return SniStatus::kFound;
      }
    }
    return SniStatus::kNotTls;
  }
  return ext.ok ? SniStatus::kNoSni : SniStatus::kNotTls;
}

}  // namespace sluice::proxy
