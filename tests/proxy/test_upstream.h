// The project's own HTTP/1.1 upstream for tests and benchmarks: one epoll thread on a
// loopback port, keep-alive, and behaviour chosen per request by headers:
//   x-status: N     answer with status N             x-delay-ms: N   answer after N ms
//   x-close: 1      close the connection, no answer  (default delay: Options.delay_ms)
// Every answer carries `x-upstream: <name>` and, as its body, the request head it
// received (so tests see rewritten paths and headers). It counts what it received.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace sluice::testing {

class TestUpstream {
 public:
  struct Options {
    std::string name = "upstream";
    uint16_t port = 0;                  // 0: any
    std::string address = "127.0.0.1";  // an IPv4 loopback address
    int delay_ms = 0;
    int status = 200;    // default status (x-status overrides)
    bool echo = true;    // body = request head; false: a fixed short body
    bool record = true;  // keep request heads for Requests()
  };
  explicit TestUpstream(Options o);
  ~TestUpstream();
  TestUpstream(const TestUpstream&) = delete;
  TestUpstream& operator=(const TestUpstream&) = delete;

  uint16_t port() const { return port_; }
  uint64_t count() const { return count_.load(); }
  uint64_t connections() const { return connections_.load(); }
  std::vector<std::string> Requests() const;  // request heads, in order
  void Reset();

 private:
  void Run();
  Options opts_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> count_{0}, connections_{0};
  mutable std::mutex mu_;
  std::vector<std::string> requests_;
  std::thread thread_;
};

}  // namespace sluice::testing
