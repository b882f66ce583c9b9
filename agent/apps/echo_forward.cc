// Echo calls the way the echo app's forwarder makes them (see echo_forward.h): one
// channel, up to 20 calls at once, one deadline for the whole set, grpc-go's error text.
#include "echo_forward.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "echo.grpc.pb.h"
#include "echo_format.h"

namespace sluice::apps {
namespace {

using Clock = std::chrono::steady_clock;

// The echo app runs at most this many calls of one forward at once.
constexpr int kMaxConcurrency = 20;

std::string Lower(std::string s) {
  for (char& c : s)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// :authority from a "Host" header; the other headers go out as metadata.
void ApplyHeaders(grpc::ClientContext& ctx, const ForwardRequest& req) {
  for (const auto& [k, v] : req.headers) {
    if (Lower(k) == "host")
      ctx.set_authority(v);
    else
      ctx.AddMetadata(Lower(k), v);
  }
}

// gRPC aborts the process on metadata it considers illegal, and ForwardEcho takes
// headers from the network: check them first. Keys (lowercased) are [0-9a-z_.-], values
// printable ASCII, as gRPC validates them.
Result<void> CheckHeaders(const ForwardRequest& req) {
  for (const auto& [k, v] : req.headers) {
    std::string key = Lower(k);
    if (key.empty() ||
        key.find_first_not_of("0123456789abcdefghijklmnopqrstuvwxyz_.-") != std::string::npos)
      return Fail("header \"" + k + "\": a gRPC metadata name is [0-9a-z_.-] (any case here)");
    if (key.ends_with("-bin"))
      return Fail("header \"" + k + "\": binary (-bin) metadata is not supported");
    for (char c : v)
      if (c < 0x20 || c > 0x7e)
        return Fail("header \"" + k + "\": the value must be printable ASCII");
  }
  return {};
}

std::chrono::system_clock::time_point SystemDeadline(Clock::time_point deadline) {
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(deadline - Clock::now());
}

}  // namespace

std::string ForwardResult::Summary() const {
  if (failed == 0)
    return "";
  std::string first;
  for (const auto& e : errors)
    if (!e.empty()) {
      first = e;
      break;
    }
  return std::to_string(failed) + "/" + std::to_string(errors.size()) +
         " requests had errors; first error: " + first;
}

Result<std::string> GrpcTarget(const std::string& url) {
  if (url.starts_with("xds:"))
    return url;
  std::string rest = url;
  if (url.starts_with("grpc://"))
    rest = url.substr(7);
  else if (url.find("://") != std::string::npos)
    return Fail("url " + url + ": only xds:/// and grpc:// URLs (or HOST:PORT) are served");
  if (!rest.empty() && rest.back() == '/')
    rest.pop_back();
  if (rest.empty() || rest.find('/') != std::string::npos || rest.rfind(':') == std::string::npos)
    return Fail("url " + url + ": want HOST:PORT after grpc://");
  return rest;
}

Result<ForwardResult> ForwardEcho(const ForwardRequest& req) {
  auto target = GrpcTarget(req.url);
  SLUICE_RETURN_IF_ERROR(target);
  SLUICE_RETURN_IF_ERROR(CheckHeaders(req));
  // One channel for every call, as the echo app reuses its connection: with xds:///
  // each call is routed (and weighted) by the xDS route on its own.
  auto channel = grpc::CreateChannel(*target, grpc::InsecureChannelCredentials());
  auto stub = proto::EchoTestService::NewStub(channel);

  const int count = std::max(req.count, 1);
  const auto start = Clock::now();
  const auto deadline = start + req.timeout;
  ForwardResult result;
  result.outputs.resize(static_cast<std::size_t>(count));
  result.errors.resize(static_cast<std::size_t>(count));
  std::atomic<int> next{0}, active{0};
  std::mutex mu;

  auto work = [&] {
    for (int i = next++; i < count; i = next++) {
      // Pacing: call i starts no earlier than i/qps seconds after the first.
      if (req.qps > 0)
        std::this_thread::sleep_until(start + std::chrono::microseconds(1'000'000LL * i / req.qps));
      ++active;
      grpc::ClientContext ctx;
      ctx.set_deadline(SystemDeadline(deadline));
      ApplyHeaders(ctx, req);
      proto::EchoRequest in;
      in.set_message(req.message);
      proto::EchoResponse out;
      auto t0 = Clock::now();
      grpc::Status st = stub->Echo(&ctx, in, &out);
      auto latency = Clock::now() - t0;
      std::vector<std::pair<std::string, std::string>> headers;
      for (const auto& [k, v] : ctx.GetServerInitialMetadata()) {
        std::string key(k.data(), k.size());
        if (!key.ends_with("-bin"))
          headers.emplace_back(std::move(key), std::string(v.data(), v.size()));
      }
      int in_flight = active--;
      std::lock_guard lock(mu);
      auto at = static_cast<std::size_t>(i);
      if (st.ok()) {
        result.outputs[at] = FormatForwardedReply(i, latency, in_flight, out.message(), headers);
      } else {
        result.errors[at] = GrpcErrorText(st.error_code(), st.error_message());
        ++result.failed;
      }
    }
  };
  std::vector<std::thread> workers;
  for (int w = 0; w < std::min(count, kMaxConcurrency); ++w)
    workers.emplace_back(work);
  for (auto& t : workers)
    t.join();
  return result;
}

Result<std::vector<std::string>> ForwardEchoVia(const std::string& server,
                                                const ForwardRequest& req) {
  auto target = GrpcTarget(server);
  SLUICE_RETURN_IF_ERROR_CTX(target, "--forward-via");
  // Headers travel as ForwardEchoRequest fields; the remote server checks them.
  auto stub = proto::EchoTestService::NewStub(
      grpc::CreateChannel(*target, grpc::InsecureChannelCredentials()));
  proto::ForwardEchoRequest in;
  in.set_url(req.url);
  in.set_count(req.count);
  in.set_qps(req.qps);
  in.set_timeout_micros(req.timeout.count());
  in.set_message(req.message);
  for (const auto& [k, v] : req.headers) {
    auto* h = in.add_headers();
    h->set_key(k);
    h->set_value(v);
  }
  grpc::ClientContext ctx;
  // The remote server spends up to `timeout` on the calls; allow it time to answer.
  ctx.set_deadline(std::chrono::system_clock::now() + req.timeout + std::chrono::seconds(5));
  proto::ForwardEchoResponse out;
  grpc::Status st = stub->ForwardEcho(&ctx, in, &out);
  if (!st.ok())
    return Fail("ForwardEcho on " + server + ": " +
                GrpcErrorText(st.error_code(), st.error_message()));
  return std::vector<std::string>(out.output().begin(), out.output().end());
}

int RunGrpcClient(const ForwardRequest& req, const std::string& forward_via) {
  if (!forward_via.empty()) {
    auto outputs = ForwardEchoVia(forward_via, req);
    if (!outputs) {
      std::fprintf(stderr, "grpc-client: %s\n", outputs.error().message.c_str());
      return 1;
    }
    for (const auto& o : *outputs)
      std::printf("%s\n", o.c_str());
    std::fflush(stdout);
    std::fprintf(stderr, "grpc-client: All %zu requests succeeded (via %s)\n", outputs->size(),
                 forward_via.c_str());
    return 0;
  }
  auto result = ForwardEcho(req);
  if (!result) {
    std::fprintf(stderr, "grpc-client: %s\n", result.error().message.c_str());
    return 1;
  }
  for (std::size_t i = 0; i < result->outputs.size(); ++i) {
    if (result->errors[i].empty())
      std::printf("%s\n", result->outputs[i].c_str());
    else
      std::printf("%s\n", FormatForwardedError(static_cast<int>(i), result->errors[i]).c_str());
  }
  std::fflush(stdout);
  if (result->failed > 0) {
    std::fprintf(stderr, "grpc-client: %s\n", result->Summary().c_str());
    return 1;
  }
  std::fprintf(stderr, "grpc-client: All %zu requests succeeded\n", result->outputs.size());
  return 0;
}

}  // namespace sluice::apps
