// DnsCache: the addresses of DNS clusters' host names (STRICT_DNS / LOGICAL_DNS, as
// istiod sends for `resolution: DNS` ServiceEntries), resolved off the config path and
// kept fresh.
//
// Compiling a config never waits on DNS for long: a name asked for the first time is
// handed to the cache's resolver thread and waited for at most `first_wait`; if the answer
// is not in by then the cluster compiles without those endpoints (503 UH until it is).
// The resolver thread re-resolves every name at its cluster's dns_refresh_rate (Envoy's
// default 5 s) and, when an answer changes, tells its subscribers, which recompile the
// configs they run. A name no config asked for in `forget_after` is dropped.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sluice/common/result.h"

namespace sluice::proxy {

class DnsCache {
 public:
  // Addresses of a name (port 0; empty: the name has none), or an error naming it when
  // the lookup itself failed (then the last addresses are kept).
  using Resolve = std::function<Result<std::vector<sockaddr_storage>>(const std::string& host)>;
  struct Options {
    Resolve resolve;  // default: getaddrinfo (TCP, any family), in answer order
    std::chrono::milliseconds first_wait{200};
    std::chrono::milliseconds forget_after{std::chrono::minutes(10)};
  };
  struct Answer {
    std::vector<sockaddr_storage> addrs;  // empty: none (yet, or the name failed)
    std::string error;                    // why there are none; "" while still resolving
  };

  explicit DnsCache(Options opts);
  DnsCache() : DnsCache(Options{}) {}
  ~DnsCache();
  DnsCache(const DnsCache&) = delete;
  DnsCache& operator=(const DnsCache&) = delete;

  // The current answer for `host`, to be refreshed every `refresh` (the shortest any
  // caller asked for wins).
  Answer Lookup(const std::string& host, std::chrono::milliseconds refresh);

  // `fn` runs on the resolver thread after a round in which some answer changed. It
  // must not call Lookup for a name not yet known (that would wait on this thread): post
  // the work elsewhere instead.
  uint64_t Subscribe(std::function<void()> fn);
  // After it returns the callback no longer runs (not to be called from a callback).
  void Unsubscribe(uint64_t id);

  // The process's cache (the agent and sluice-proxy compile through it).
  static DnsCache& Default();

 private:
  struct Entry {
    Answer answer;
    bool resolved = false;    // at least one resolution finished
    bool waited_out = false;  // a caller stopped waiting before the first answer
    std::chrono::milliseconds refresh{5000};
    std::chrono::steady_clock::time_point next_due{}, last_asked{};
  };
  void Run();

  Options opts_;
  std::mutex mu_;
  std::condition_variable cv_;       // the resolver: work to do
  std::condition_variable done_cv_;  // callers waiting for a first answer
  std::map<std::string, Entry> entries_;
  std::map<uint64_t, std::function<void()>> subscribers_;
  uint64_t next_id_ = 1;
  bool stop_ = false, notifying_ = false;
  std::thread thread_;
};

}  // namespace sluice::proxy
