// The response path of a session: the upstream's head (retried if its status says so),
// rewritten and relayed with its body under backpressure, the connection kept or
// closed after it; and the local replies the proxy makes itself (404, 503, 504, a
// fault's abort, a direct response, a redirect).
#include <algorithm>

#include "header_rewrite.h"
#include "session.h"
#include "sluice/proxy/retry.h"
#include "upstream_pool.h"

namespace sluice::proxy::engine {

void Session::OnUpHeaders(UpstreamConn* u) {
  const http::ResponseHead& r = u->resp;
  w->upstreams().OnEndpointResult(*cluster, up_ep, r.status >= 500);
  bool has_status = false;
  std::string_view grpc_status = grpc ? r.Get("grpc-status", &has_status) : std::string_view();
  if (RetriableStatus(route->action.retry, r.status) && ScheduleRetry()) {
    DropUpstream(false);
    return;
  }
  if (has_status) {
    // A trailers-only response: its grpc-status is in the head. Envoy's retry_on gRPC
    // conditions read it there (not from trailers, which come after the response began).
    std::optional<int> code = grpc::ParseGrpcStatus(grpc_status);
    if (code && RetriableGrpcStatus(route->action.retry, *code) && ScheduleRetry()) {
      DropUpstream(false);
      return;
    }
    has_grpc_head_status = true;
    CopyStr(grpc_head_status, grpc_status);
  }
  w->Cancel(try_timer);
  status = r.status;
  details = "via_upstream";
  response_started = true;
  last_io_ms = w->now();
  service_time_ms = w->now() - service_time_ms;
  resp_head_at = out.size();
  WriteResponseHead(r);
  if (r.status == 101) {
    w->Cancel(route_timer);
    phase = Phase::kTunnel;
    TryWrite();
  } else {
    phase = Phase::kResponse;
  }
  // The head goes out with the first body bytes (OnUpReadDone): one send, not two.
}

void Session::WriteResponseHead(const http::ResponseHead& r) {
  std::size_t before = out.size();
  out.Append("HTTP/1.1 ");
  AppendNum(out, static_cast<uint64_t>(r.status));
  out.Append(" ");
  out.Append(r.reason.empty() ? http::ReasonPhrase(r.status) : r.reason);
  out.Append("\r\n");
  const HeaderMutations* levels[4] = {wc ? &wc->response_headers : nullptr,
                                      &route->response_headers, &vh->response_headers,
                                      &chain->http.routes->response_headers};
  bool upgrade = r.status == 101;
  const bool mutated = AnyMutations(levels, 4);
  LineRun unchanged(out);
  for (std::size_t i = 0; i < r.num_headers; ++i) {
    const http::Header& h = r.headers[i];
    if ((upgrade ? h.id == http::HeaderId::kKeepAlive : IsHopByHop(h.id)) ||
        h.id == http::HeaderId::kXEnvoyUpstreamServiceTime ||
        (r.drop_content_length && h.id == http::HeaderId::kContentLength) ||
        (mutated && Replaced(levels, 4, h.name)) || (cors && CorsReplaces(h.name))) {
      unchanged.Flush();
      continue;
    }
    unchanged.Add(h);
  }
  unchanged.Flush();
  EmitAdds(out, levels, 4, r);
  if (cors)
    AppendCorsHeaders(out);
  out.Append("x-envoy-upstream-service-time: ");
  AppendNum(out, static_cast<uint64_t>(std::max<int64_t>(0, service_time_ms)));
  out.Append("\r\n");
  if (!upgrade) {
    // A close-delimited upstream body can only be relayed by closing after it; while
    // draining, the client learns from this response not to send another request.
    if (r.close_delimited || w->draining())
      close_after = true;
    AppendConnection();
  }
  out.Append("\r\n");
  bytes_tx += out.size() - before;
}

void Session::AppendConnection() {
  if (close_after)
    out.Append("connection: close\r\n");
  else if (req.minor_version == 0)
    out.Append("connection: keep-alive\r\n");  // HTTP/1.0 is kept alive only when told so
}

void Session::OnUpData(UpstreamConn* u, std::string_view data) {
  out.Append(data);
  bytes_tx += data.size();
  last_io_ms = w->now();
  if (out.size() > 256 * 1024) {
    uint64_t g = gen;
    TryWrite();
    if (g != gen)
      return;
  }
  Account();
  // Backpressure: stop reading the upstream while the client is slow, or while the
  // worker holds more than its budget (TryWrite resumes it once `out` is written).
  if (u == up && (out.size() > 4 * 1024 * 1024 || !w->budget().MayBuffer(out.size())))
    u->PauseRead(true);
}

void Session::OnUpDrained(UpstreamConn*) {
  if (phase != Phase::kTunnel || !up)
    return;
  if (down_eof) {
    w->loop().ShutdownWrite(up->fd);  // the client's half-close, passed on once its bytes are out
  } else if (read_ready) {
    TunnelRead();  // its read clears read_ready
  }
}

void Session::OnUpReadDone(UpstreamConn*) {
  if (!out.empty())
    TryWrite();
}

void Session::OnUpDone(UpstreamConn* u) {
  if (grpc) {
    if (auto v = u->chunk.grpc_status()) {
      has_grpc_trailer_status = true;
      CopyStr(grpc_trailer_status, *v);
    }
  }
  // An HTTP/1.1 connection whose request was not all sent (a streamed body the server
  // answered early) cannot carry another; an HTTP/2 stream is reset (CANCEL).
  DropUpstream(u->reusable && request_complete);
  uint64_t g = gen;
  TryWrite();  // the response first, then the next pipelined request
  if (g != gen)
    return;
  Finish();
}

// Envoy's CORS filter on a response (its encodeHeaders): the latched origin, and the
// policy's credentials and expose headers, each replacing the upstream's own.
bool Session::CorsReplaces(std::string_view name) const {
  return http::EqualsIgnoreCase(name, "access-control-allow-origin") ||
         (cors->allow_credentials &&
          http::EqualsIgnoreCase(name, "access-control-allow-credentials")) ||
         (!cors->expose_headers.empty() &&
          http::EqualsIgnoreCase(name, "access-control-expose-headers"));
}

void Session::AppendCorsHeaders(Buffer& dst) const {
  dst.Append("access-control-allow-origin: ");
  dst.Append(cors_origin);
  dst.Append("\r\n");
  if (cors->allow_credentials)
    dst.Append("access-control-allow-credentials: true\r\n");
  if (!cors->expose_headers.empty()) {
    dst.Append("access-control-expose-headers: ");
    dst.Append(cors->expose_headers);
    dst.Append("\r\n");
  }
}

void Session::Local(int code, std::string_view body, uint32_t flag, const char* why,
                    std::string_view extra_header, bool route_headers) {
  flags |= flag;
  status = code;
  details = why;
  DropUpstream(false);
  std::size_t before = out.size();
  if (grpc && route_headers) {
    LocalGrpc(code, body, extra_header);
    return;
  }
  out.Append("HTTP/1.1 ");
  AppendNum(out, static_cast<uint64_t>(code));
  out.Append(" ");
  out.Append(http::ReasonPhrase(code));
  out.Append("\r\ncontent-length: ");
  AppendNum(out, body.size());
  out.Append("\r\n");
  if (!body.empty())
    out.Append("content-type: text/plain\r\n");
  if (!extra_header.empty()) {
    out.Append(extra_header);
    out.Append("\r\n");
  }
  if (route && route_headers) {
    const HeaderMutations* levels[3] = {&route->response_headers, &vh->response_headers,
                                        &chain->http.routes->response_headers};
    http::ResponseHead empty;
    EmitAdds(out, levels, 3, empty);
  }
  // A local reply after the CORS filter let the request on (a 503, a timeout's 504)
  // passes back through it, as in Envoy.
  if (route && cors)
    AppendCorsHeaders(out);
  if (w->draining())
    close_after = true;
  AppendConnection();
  out.Append("\r\n");
  if (req.method != "HEAD")
    out.Append(body);
  bytes_tx += out.size() - before;
  Finish();
  if (phase != Phase::kClosed)
    TryWrite();
}

// A local reply to a gRPC request, as Envoy's sendLocalReply makes it: a trailers-only
// response (HTTP 200, the status and message in its head, no body; grpc.h's
// LocalReplyHead). What goes out is a 200, and that is what the access log and the
// metrics record, as Envoy's do; the reply's meaning is in its grpc-status.
void Session::LocalGrpc(int code, std::string_view body, std::string_view extra_header) {
  std::size_t before = out.size();
  status = 200;
  std::optional<grpc::Status> forced;
  if (flags & kFlagDT)
    forced = grpc::kDeadlineExceeded;  // Envoy's max-duration reply
  const std::vector<grpc::Field> head = grpc::LocalReplyHead(code, body, forced);
  for (const grpc::Field& f : head) {
    if (f.name == ":status") {
      out.Append("HTTP/1.1 ");
      out.Append(f.value);
      out.Append(" OK\r\ncontent-length: 0\r\n");
      continue;
    }
    out.Append(f.name);
    out.Append(": ");
    out.Append(f.value);
    out.Append("\r\n");
    if (f.name == "grpc-status") {
      has_grpc_head_status = true;
      CopyStr(grpc_head_status, f.value);
    }
  }
  if (!extra_header.empty()) {
    out.Append(extra_header);
    out.Append("\r\n");
  }
  if (route) {
    const HeaderMutations* levels[3] = {&route->response_headers, &vh->response_headers,
                                        &chain->http.routes->response_headers};
    http::ResponseHead empty;
    EmitAdds(out, levels, 3, empty);
  }
  if (route && cors)
    AppendCorsHeaders(out);
  if (w->draining())
    close_after = true;
  AppendConnection();
  out.Append("\r\n");
  bytes_tx += out.size() - before;
  Finish();
  if (phase != Phase::kClosed)
    TryWrite();
}

std::string Session::GrpcStatus() const {
  if (!grpc)
    return {};
  auto view = [](bool has, const char* v) {
    return has ? std::optional<std::string_view>(v) : std::nullopt;
  };
  return grpc::GrpcStatusForLog(view(has_grpc_head_status, grpc_head_status),
                                view(has_grpc_trailer_status, grpc_trailer_status), status);
}

}  // namespace sluice::proxy::engine
