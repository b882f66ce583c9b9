// libFuzzer target for the HTTP/1.1 codec and the ClientHello SNI reader. Beyond "no
// crash, no UB" (ASan/UBSan), it checks the invariants the proxy relies on: every view
// points inside the input, and a parsed head is never longer than the input.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "sluice/proxy/http_codec.h"
#include "sluice/proxy/tls_sni.h"

namespace http = sluice::proxy::http;

namespace {

void Inside(std::string_view whole, std::string_view part) {
  if (part.empty())
    return;
  if (part.data() < whole.data() || part.data() + part.size() > whole.data() + whole.size())
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
    }
    if (req.chunked && req.content_length >= 0)
      std::abort();  // smuggling guard
    if (req.chunked) {
      http::ChunkedDecoder d;
      std::string body;
      std::size_t used = d.Feed(in.substr(req.head_len), &body);
      if (used > size - req.head_len || body.size() > used)
        std::abort();
    }
  }
  static http::ResponseHead resp;
  if (http::ParseResponse(in, false, &resp) == http::ParseStatus::kDone) {
    if (resp.head_len > size)
      std::abort();
    Inside(in, resp.reason);
  }
  std::string_view sni;
  if (sluice::proxy::ParseClientHelloSni(in, &sni) == sluice::proxy::SniStatus::kFound)
    Inside(in, sni);
  return 0;
}
