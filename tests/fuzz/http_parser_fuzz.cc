// libFuzzer target for the HTTP/1.1 codec and the ClientHello SNI reader. Beyond "no
// crash, no UB" (ASan/UBSan), it checks the invariants the proxy relies on: every view
// points inside the input, header lines inside the head, a parsed head is never longer
// than the input, and the chunked decoder gives the same answer however the body is
// split across Feed calls.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "sluice/proxy/http_codec.h"
#include "sluice/proxy/listener_filters.h"
#include "sluice/proxy/tls_sni.h"

namespace http = sluice::proxy::http;

namespace {

void Inside(std::string_view whole, std::string_view part) {
  if (part.empty())
    return;
  if (part.data() < whole.data() || part.data() + part.size() > whole.data() + whole.size())
    std::abort();
}

// Decodes body in one Feed and again in two (split at `cut`): both must agree.
void CheckChunked(std::string_view body, std::size_t cut) {
  http::ChunkedDecoder whole;
  std::string out;
  std::size_t used = whole.Feed(body, &out);
  if (used > body.size() || out.size() > used)
    std::abort();
  cut = cut % (body.size() + 1);
  http::ChunkedDecoder split;
  std::string out2;
  std::size_t used2 = split.Feed(body.substr(0, cut), &out2);
  if (used2 == cut && !split.done() && !split.failed())
    used2 += split.Feed(body.substr(cut), &out2);
  if (whole.done() != split.done() || whole.failed() != split.failed() || out != out2)
    std::abort();
  if (whole.done() && used != used2)
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  static http::RequestHead req;
  http::Limits limits;
  limits.max_head_bytes = 8192;
  if (http::ParseRequest(in, limits, &req) == http::ParseStatus::kDone) {
    if (req.head_len > size)
      std::abort();
    Inside(in, req.method);
    // absolute-form without a path ("GET http://host HTTP/1.1") gets the static "/".
    if (req.target != "/") {
      Inside(in, req.target);
      Inside(in, req.path);
    }
    Inside(in, req.query);
    Inside(in, req.host);
    for (std::size_t i = 0; i < req.num_headers; ++i) {
      Inside(in, req.headers[i].name);
      Inside(in, req.headers[i].value);
      Inside(in.substr(0, req.head_len), req.headers[i].line());
    }
    if (req.chunked && req.content_length >= 0)
      std::abort();  // smuggling guard
    if (req.chunked)
      CheckChunked(in.substr(req.head_len), size);
  }
  static http::ResponseHead resp;
  if (http::ParseResponse(in, false, &resp) == http::ParseStatus::kDone) {
    if (resp.head_len > size)
      std::abort();
    Inside(in, resp.reason);
    for (std::size_t i = 0; i < resp.num_headers; ++i)
      Inside(in.substr(0, resp.head_len), resp.headers[i].line());
    if (resp.drop_content_length && resp.content_length != 0)
      std::abort();
    if (resp.chunked)
      CheckChunked(in.substr(resp.head_len), size / 2);
  }
  std::string_view sni;
  if (sluice::proxy::ParseClientHelloSni(in, &sni) == sluice::proxy::SniStatus::kFound)
    Inside(in, sni);
  // The listener filters' readers on the same bytes; an ALPN name they return is 1 to
  // 255 bytes long (RFC 7301), whatever the input claims.
  sluice::proxy::TlsHello hello;
  if (sluice::proxy::InspectTls(in, &hello) == sluice::proxy::Inspect::kDone && hello.tls) {
    for (const auto& p : hello.alpn)
      if (p.empty() || p.size() > 255)
        std::abort();
  }
  std::string protocol;
  (void)sluice::proxy::InspectHttp(in, &protocol);
  return 0;
}
