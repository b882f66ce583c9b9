#include "sluice/proxy/dns.h"

#include <netdb.h>

#include <algorithm>
#include <cstring>

namespace sluice::proxy {

namespace {

Result<std::vector<sockaddr_storage>> GetAddrInfo(const std::string& host) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc == EAI_NONAME || rc == EAI_NODATA)
    return std::vector<sockaddr_storage>{};  // an answer: the name has no addresses
  if (rc != 0 || !res)
    return Fail("cannot resolve \"" + host + "\": " + gai_strerror(rc));
  std::vector<sockaddr_storage> out;
  for (addrinfo* a = res; a; a = a->ai_next) {
    sockaddr_storage ss{};
    std::memcpy(&ss, a->ai_addr, std::min<std::size_t>(a->ai_addrlen, sizeof(ss)));
    out.push_back(ss);
  }
  freeaddrinfo(res);
  return out;
}

bool SameAddrs(const std::vector<sockaddr_storage>& a, const std::vector<sockaddr_storage>& b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](const auto& x, const auto& y) {
           return std::memcmp(&x, &y, sizeof(x)) == 0;
         });
}

}  // namespace

DnsCache::DnsCache(Options opts) : opts_(std::move(opts)) {
  if (!opts_.resolve)
    opts_.resolve = GetAddrInfo;
  thread_ = std::thread([this] { Run(); });
}

DnsCache::~DnsCache() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

DnsCache& DnsCache::Default() {
  static DnsCache cache;
  return cache;
}

DnsCache::Answer DnsCache::Lookup(const std::string& host, std::chrono::milliseconds refresh) {
  const auto now = std::chrono::steady_clock::now();
  std::unique_lock lock(mu_);
  auto [it, fresh] = entries_.try_emplace(host);
  Entry& e = it->second;
  e.last_asked = now;
  if (fresh || refresh < e.refresh)
    e.refresh = std::max(refresh, std::chrono::milliseconds(1));
  if (fresh) {
    e.next_due = now;  // resolve at once
    cv_.notify_all();
  }
  if (!e.resolved &&
      !done_cv_.wait_for(lock, opts_.first_wait, [&] { return e.resolved || stop_; }))
    e.waited_out = true;  // its config compiles without it: the answer will be news
  return e.answer;
}

uint64_t DnsCache::Subscribe(std::function<void()> fn) {
  std::lock_guard lock(mu_);
  subscribers_[next_id_] = std::move(fn);
  return next_id_++;
}

void DnsCache::Unsubscribe(uint64_t id) {
  std::unique_lock lock(mu_);
  subscribers_.erase(id);
  done_cv_.wait(lock, [this] { return !notifying_; });  // its callback may be running
}

void DnsCache::Run() {
  std::unique_lock lock(mu_);
  while (!stop_) {
    const auto now = std::chrono::steady_clock::now();
    auto wake = now + std::chrono::seconds(1);
    std::vector<std::string> due;
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (now - it->second.last_asked > opts_.forget_after) {
        it = entries_.erase(it);  // no config has asked for it in a long while
        continue;
      }
      if (it->second.next_due <= now)
        due.push_back(it->first);
      else
        wake = std::min(wake, it->second.next_due);
      ++it;
    }
    if (due.empty()) {
      cv_.wait_until(lock, wake);
      continue;
    }
    bool changed = false;
    for (const std::string& host : due) {
      lock.unlock();  // a slow resolver holds up only this thread
      auto r = opts_.resolve(host);
      lock.lock();
      auto it = entries_.find(host);
      if (it == entries_.end())
        continue;
      Entry& e = it->second;
      Answer a;
      if (!r) {
        // The lookup failed (no answer, not "no such name"): keep the last addresses, as
        // Envoy keeps a DNS cluster's hosts until a resolution succeeds.
        a.error = r.error().message;
        a.addrs = e.answer.addrs;
      } else if (r->empty()) {
        a.error = "cannot resolve \"" + host + "\": the name has no addresses";
      } else {
        a.addrs = std::move(*r);
      }
      if (!e.resolved) {
        // A first answer is news only to configs compiled while it was pending.
        changed |= e.waited_out && !a.addrs.empty();
        e.answer = std::move(a);
      } else if (!SameAddrs(a.addrs, e.answer.addrs)) {
        changed = true;
        e.answer = std::move(a);
      } else {
        e.answer.error = a.error;
      }
      e.resolved = true;
      e.next_due = std::chrono::steady_clock::now() + e.refresh;
    }
    done_cv_.notify_all();
    if (changed) {
      auto subs = subscribers_;
      notifying_ = true;
      lock.unlock();
      for (auto& [id, fn] : subs)
        fn();
      lock.lock();
      notifying_ = false;
      done_cv_.notify_all();
    }
  }
  done_cv_.notify_all();
}

}  // namespace sluice::proxy
