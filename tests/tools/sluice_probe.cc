// sluice_probe: real TCP clients and servers inside network namespaces, for the kernel
// tests, the demo and the benchmarks.
//
//   sluice_probe serve   --netns NS [--cgroup DIR] --listen ADDR:PORT [--listen ...]
//                        --id NAME [--orig-dst]
//   sluice_probe connect --netns NS [--cgroup DIR] --to ADDR:PORT [--count N]
//                        [--source-base IP --sources K] [--hold] [--peer] [--mark M]
//                        [--echo BYTES]
//   sluice_probe bench   --netns NS [--cgroup DIR] --to ADDR:PORT --seconds S [--rr]
//
// serve: on each accepted connection writes "NAME\n", then echoes what it reads; one
//   epoll loop, many listeners. Prints "listening" once all sockets listen. With
//   --orig-dst the greeting is "NAME ADDR:PORT\n", ADDR:PORT being what
//   getsockopt(SO_ORIGINAL_DST) answers on the accepted socket (as an in-pod proxy
//   asks), or "NAME none".
// --udp (serve and connect): UDP instead of TCP. The server answers each datagram with
//   "NAME\n"; the client sends one datagram per count on a connected socket and waits
//   up to 300 ms for the answer (errors["timeout"] otherwise).
// connect --mark M: sets SO_MARK before connecting (the agent's bypass mark).
// connect --echo BYTES: after the greeting, sends BYTES of patterned data in 1000-byte
//   writes, reads them back and counts connections whose echo differs (echo_mismatch).
// connect: opens N connections one after another, reads each greeting and reports, as
//   one JSON object, how many reached each server, errors by errno name, and (--peer)
//   how many sockets reported a peer other than the dialled address. With --sources,
//   connection i binds to source address base+(i % K) first and the report maps each
//   source to the servers it reached. --hold keeps the connections open until stdin
//   closes (the report is printed first).
// bench: for S seconds, connect + read greeting + close (connection rate, connect
//   latency percentiles); with --rr, one connection and 1-byte echoes instead
//   (request/response latency).
//
// The process moves itself into --cgroup before opening any socket and enters the
// network namespace /var/run/netns/NS (or a path) with setns.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const std::string& msg) {
  std::cerr << "sluice_probe: " << msg << "\n";
  std::exit(2);
}

[[noreturn]] void DieErrno(const std::string& what) {
  Die(what + ": " + std::strerror(errno));
}

struct Addr {
  sockaddr_storage ss{};
  socklen_t len = 0;
  int family() const { return ss.ss_family; }
};

std::optional<Addr> ParseIp(const std::string& ip, uint16_t port) {
  Addr a;
  auto* in4 = reinterpret_cast<sockaddr_in*>(&a.ss);
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&a.ss);
  if (inet_pton(AF_INET, ip.c_str(), &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons(port);
    a.len = sizeof(sockaddr_in);
    return a;
  }
  if (inet_pton(AF_INET6, ip.c_str(), &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    a.len = sizeof(sockaddr_in6);
    return a;
  }
  return std::nullopt;
}

Addr ParseAddr(const std::string& text) {
  std::string host, port;
  if (!text.empty() && text[0] == '[') {
    auto close = text.find(']');
    if (close == std::string::npos || close + 2 > text.size())
      Die("bad address '" + text + "' (want [IPv6]:port)");
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string::npos)
      Die("bad address '" + text + "' (want IP:port)");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  auto a = ParseIp(host, static_cast<uint16_t>(std::atoi(port.c_str())));
  if (!a)
    Die("bad address '" + text + "'");
  return *a;
}

std::string ToString(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &in->sin_addr, buf, sizeof(buf));
    return std::string(buf) + ":" + std::to_string(ntohs(in->sin_port));
  }
  auto* in6 = reinterpret_cast<const sockaddr_in6*>(&ss);
  inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof(buf));
  return "[" + std::string(buf) + "]:" + std::to_string(ntohs(in6->sin6_port));
}

std::string IpOnly(const sockaddr_storage& ss) {
  std::string s = ToString(ss);
  auto colon = s.rfind(':');
  s = s.substr(0, colon);
  if (!s.empty() && s[0] == '[')
    s = s.substr(1, s.size() - 2);
  return s;
}

void JoinCgroup(const std::string& dir) {
  std::ofstream f(dir + "/cgroup.procs");
  f << getpid() << std::flush;
  if (!f)
    Die("cannot join cgroup " + dir + " (write to cgroup.procs failed)");
}

void EnterNetns(const std::string& ns) {
  std::string path = ns.find('/') == std::string::npos ? "/var/run/netns/" + ns : ns;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    DieErrno("open " + path);
  if (setns(fd, CLONE_NEWNET) != 0)
    DieErrno("setns " + path);
  close(fd);
}

std::string ErrnoName(int e) {
  const char* name = strerrorname_np(e);
  return name ? name : "errno" + std::to_string(e);
}

struct Args {
  std::string mode, netns, cgroup, id = "server", to, source_base;
  std::vector<std::string> listen;
  long count = 1, sources = 0, echo = 0;
  unsigned mark = 0;
  bool orig_dst = false, udp = false;
  double seconds = 1;
  bool hold = false, peer = false, rr = false;
};

Args ParseArgs(int argc, char** argv) {
  if (argc < 2)
    Die("usage: sluice_probe serve|connect|bench [flags] (see the source header)");
  Args a;
  a.mode = argv[1];
  for (int i = 2; i < argc; i++) {
    std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc)
        Die(f + " needs a value");
      return argv[++i];
    };
    if (f == "--netns")
      a.netns = value();
    else if (f == "--cgroup")
      a.cgroup = value();
    else if (f == "--id")
      a.id = value();
    else if (f == "--to")
      a.to = value();
    else if (f == "--listen")
      a.listen.push_back(value());
    else if (f == "--count")
      a.count = std::stol(value());
    else if (f == "--sources")
      a.sources = std::stol(value());
    else if (f == "--source-base")
      a.source_base = value();
    else if (f == "--seconds")
      a.seconds = std::stod(value());
    else if (f == "--hold")
      a.hold = true;
    else if (f == "--peer")
      a.peer = true;
    else if (f == "--rr")
      a.rr = true;
    else if (f == "--orig-dst")
      a.orig_dst = true;
    else if (f == "--udp")
      a.udp = true;
    else if (f == "--mark")
      a.mark = static_cast<unsigned>(std::stoul(value(), nullptr, 0));
    else if (f == "--echo")
      a.echo = std::stol(value());
    else
      Die("unknown flag " + f);
  }
  return a;
}

int ServeUdp(const Args& a) {
  std::vector<pollfd> fds;
  for (const auto& l : a.listen) {
    Addr addr = ParseAddr(l);
    int fd = socket(addr.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (addr.family() == AF_INET6)
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr.ss), addr.len) != 0)
      DieErrno("bind udp " + l);
    fds.push_back({fd, POLLIN, 0});
  }
  std::cout << "listening" << std::endl;
  const std::string greeting = a.id + "\n";
  char buf[2048];
  for (;;) {
    if (poll(fds.data(), fds.size(), -1) <= 0)
      continue;
    for (auto& p : fds) {
      if (!(p.revents & POLLIN))
        continue;
      sockaddr_storage from{};
      socklen_t len = sizeof(from);
      if (recvfrom(p.fd, buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &len) >= 0)
        sendto(p.fd, greeting.data(), greeting.size(), 0, reinterpret_cast<sockaddr*>(&from), len);
    }
  }
}

int Serve(const Args& a) {
  if (a.listen.empty())
    Die("serve needs --listen ADDR:PORT");
  if (a.udp)
    return ServeUdp(a);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  std::vector<int> listeners;
  for (const auto& l : a.listen) {
    Addr addr = ParseAddr(l);
    int fd = socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (addr.family() == AF_INET6)
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr.ss), addr.len) != 0)
      DieErrno("bind " + l);
    if (listen(fd, 4096) != 0)
      DieErrno("listen " + l);
    epoll_event ev{EPOLLIN, {.fd = fd}};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    listeners.push_back(fd);
  }
  std::cout << "listening" << std::endl;
  const std::string greeting = a.id + "\n";
  epoll_event events[256];
  std::map<int, std::string> pending;  // echo bytes the peer has not taken yet
  char buf[65536];
  for (;;) {
    int n = epoll_wait(ep, events, 256, -1);
    if (n < 0 && errno == EINTR)
      continue;
    for (int i = 0; i < n; i++) {
      int fd = events[i].data.fd;
      if (std::find(listeners.begin(), listeners.end(), fd) != listeners.end()) {
        for (;;) {
          int c = accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0)
            break;
          int one = 1;
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          std::string hello = greeting;
          if (a.orig_dst) {
            sockaddr_storage od{};
            socklen_t len = sizeof(od);
            sockaddr_storage self{};
            socklen_t self_len = sizeof(self);
            getsockname(c, reinterpret_cast<sockaddr*>(&self), &self_len);
            const int level = self.ss_family == AF_INET6 ? SOL_IPV6 : SOL_IP;
            bool ok = getsockopt(c, level, SO_ORIGINAL_DST, &od, &len) == 0;
            hello = a.id + " " + (ok ? ToString(od) : "none") + "\n";
          }
          if (write(c, hello.data(), hello.size()) < 0) {
            close(c);
            continue;
          }
          epoll_event ev{EPOLLIN, {.fd = c}};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
        }
        continue;
      }
      // Echo with back-pressure: what the socket does not take now waits in `pending`
      // (reading pauses meanwhile), so no byte is dropped when the peer reads slowly.
      std::string& out = pending[fd];
      bool broken = false;
      if (events[i].events & EPOLLIN) {
        ssize_t r = read(fd, buf, sizeof(buf));
        if (r > 0)
          out.append(buf, static_cast<size_t>(r));
        else if (r == 0 || (errno != EAGAIN && errno != EINTR))
          broken = true;
      }
      while (!broken && !out.empty()) {
        ssize_t w = write(fd, out.data(), out.size());
        if (w < 0) {
          broken = errno != EAGAIN && errno != EINTR;
          break;
        }
        out.erase(0, static_cast<size_t>(w));
      }
      if (broken) {
        pending.erase(fd);
        close(fd);  // also removes it from the epoll set
        continue;
      }
      epoll_event ev{out.empty() ? static_cast<uint32_t>(EPOLLIN) : static_cast<uint32_t>(EPOLLOUT),
                     {.fd = fd}};
      epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    }
  }
}

// Reads the server's greeting line; empty on error (errno set).
std::string ReadLine(int fd) {
  std::string line;
  char c;
  while (line.size() < 256) {
    ssize_t r = read(fd, &c, 1);
    if (r <= 0) {
      if (r == 0)
        errno = ECONNRESET;
      return {};
    }
    if (c == '\n')
      return line;
    line.push_back(c);
  }
  return line;
}

// Sends `bytes` of patterned data in 1000-byte writes while reading the echo back;
// true when every byte came back in order.
bool Echo(int fd, long bytes) {
  std::vector<char> out(static_cast<size_t>(bytes)), in(static_cast<size_t>(bytes));
  for (long i = 0; i < bytes; i++)
    out[static_cast<size_t>(i)] = static_cast<char>('a' + (i * 7 + i / 1000) % 26);
  long sent = 0, got = 0;
  while (got < bytes) {
    if (sent < bytes) {
      long n = std::min<long>(1000, bytes - sent);
      ssize_t w = write(fd, out.data() + sent, static_cast<size_t>(n));
      if (w <= 0)
        return false;
      sent += w;
    }
    // Read what is there, without blocking while there is still data to send.
    pollfd pfd{fd, POLLIN, 0};
    if (poll(&pfd, 1, sent < bytes ? 0 : 5000) <= 0) {
      if (sent < bytes)
        continue;
      return false;
    }
    ssize_t r = read(fd, in.data() + got, static_cast<size_t>(bytes - got));
    if (r <= 0)
      return false;
    got += r;
  }
  return in == out;
}

void SetTimeouts(int fd) {
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

int Connect(const Args& a) {
  Addr to = ParseAddr(a.to);
  std::vector<Addr> sources;
  if (a.sources > 0) {
    // base + i over the last 32 bits of the address
    auto base = ParseIp(a.source_base, 0);
    if (!base)
      Die("--source-base needs an IP address");
    for (long i = 0; i < a.sources; i++) {
      Addr s = *base;
      if (s.family() == AF_INET) {
        auto* in = reinterpret_cast<sockaddr_in*>(&s.ss);
        in->sin_addr.s_addr = htonl(ntohl(in->sin_addr.s_addr) + static_cast<uint32_t>(i));
      } else {
        auto* in6 = reinterpret_cast<sockaddr_in6*>(&s.ss);
        uint32_t last;
        std::memcpy(&last, &in6->sin6_addr.s6_addr[12], 4);
        last = htonl(ntohl(last) + static_cast<uint32_t>(i));
        std::memcpy(&in6->sin6_addr.s6_addr[12], &last, 4);
      }
      sources.push_back(s);
    }
  }
  nlohmann::json report;
  std::map<std::string, long> by_server, errors;
  std::map<std::string, std::map<std::string, long>> by_source;
  long ok = 0, peer_mismatch = 0, echo_mismatch = 0;
  std::vector<int> held;
  for (long i = 0; i < a.count && a.udp; i++) {
    int fd = socket(to.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (connect(fd, reinterpret_cast<sockaddr*>(&to.ss), to.len) != 0 ||
        send(fd, "ping", 4, 0) != 4) {
      errors[ErrnoName(errno)]++;
      close(fd);
      continue;
    }
    pollfd pfd{fd, POLLIN, 0};
    char buf[256];
    ssize_t n = poll(&pfd, 1, 300) == 1 ? recv(fd, buf, sizeof(buf), 0) : -1;
    close(fd);
    if (n <= 0) {
      errors["timeout"]++;
      continue;
    }
    ok++;
    by_server[std::string(buf, static_cast<size_t>(n) - (buf[n - 1] == '\n' ? 1 : 0))]++;
  }
  for (long i = 0; i < a.count && !a.udp; i++) {
    int fd = socket(to.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
      DieErrno("socket");
    SetTimeouts(fd);
    if (a.mark && setsockopt(fd, SOL_SOCKET, SO_MARK, &a.mark, sizeof(a.mark)) != 0)
      DieErrno("SO_MARK");
    std::string src;
    if (!sources.empty()) {
      const Addr& s = sources[static_cast<size_t>(i % a.sources)];
      if (bind(fd, reinterpret_cast<const sockaddr*>(&s.ss), s.len) != 0)
        DieErrno("bind source " + IpOnly(s.ss));
      src = IpOnly(s.ss);
    }
    if (connect(fd, reinterpret_cast<sockaddr*>(&to.ss), to.len) != 0) {
      errors[ErrnoName(errno)]++;
      close(fd);
      continue;
    }
    std::string id = ReadLine(fd);
    if (id.empty()) {
      errors[ErrnoName(errno)]++;
      close(fd);
      continue;
    }
    if (a.echo > 0 && !Echo(fd, a.echo))
      echo_mismatch++;
    ok++;
    by_server[id]++;
    if (!src.empty())
      by_source[src][id]++;
    if (a.peer) {
      sockaddr_storage peer{};
      socklen_t len = sizeof(peer);
      getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len);
      if (ToString(peer) != ToString(to.ss)) {
        peer_mismatch++;
        report["last_peer"] = ToString(peer);
      }
    }
    if (a.hold)
      held.push_back(fd);
    else
      close(fd);
  }
  report["to"] = ToString(to.ss);
  report["attempts"] = a.count;
  report["ok"] = ok;
  report["by_server"] = by_server;
  report["errors"] = errors;
  if (a.peer)
    report["peer_mismatch"] = peer_mismatch;
  if (a.echo > 0)
    report["echo_mismatch"] = echo_mismatch;
  if (!by_source.empty())
    report["by_source"] = by_source;
  std::cout << report.dump() << std::endl;
  if (a.hold) {
    char c;
    while (read(STDIN_FILENO, &c, 1) > 0) {
    }
    for (int fd : held)
      close(fd);
  }
  return 0;
}

double Percentile(std::vector<double>& v, double p) {
  if (v.empty())
    return 0;
  size_t k = static_cast<size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
  return v[k];
}

int Bench(const Args& a) {
  Addr to = ParseAddr(a.to);
  std::vector<double> lat_us;
  lat_us.reserve(1 << 20);
  long errors = 0;
  const auto end = Clock::now() + std::chrono::duration<double>(a.seconds);
  auto start = Clock::now();
  if (a.rr) {
    int fd = socket(to.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    SetTimeouts(fd);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, reinterpret_cast<sockaddr*>(&to.ss), to.len) != 0 || ReadLine(fd).empty())
      DieErrno("connect " + a.to);
    char c = 'x';
    while (Clock::now() < end) {
      auto t0 = Clock::now();
      if (write(fd, &c, 1) != 1 || read(fd, &c, 1) != 1)
        DieErrno("echo");
      lat_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    close(fd);
  } else {
    while (Clock::now() < end) {
      auto t0 = Clock::now();
      int fd = socket(to.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
      SetTimeouts(fd);
      // RST on close: no TIME_WAIT build-up over hundreds of thousands of connections.
      linger lg{1, 0};
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
      if (connect(fd, reinterpret_cast<sockaddr*>(&to.ss), to.len) != 0 || ReadLine(fd).empty())
        errors++;
      else
        lat_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      close(fd);
    }
  }
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  nlohmann::json r;
  r["mode"] = a.rr ? "rr" : "connect";
  r["ops"] = lat_us.size();
  r["errors"] = errors;
  r["seconds"] = secs;
  r["rate"] = static_cast<double>(lat_us.size()) / secs;
  r["p50_us"] = Percentile(lat_us, 0.50);
  r["p99_us"] = Percentile(lat_us, 0.99);
  std::cout << r.dump() << std::endl;
  return errors == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Args a = ParseArgs(argc, argv);
  if (!a.cgroup.empty())
    JoinCgroup(a.cgroup);
  if (!a.netns.empty())
    EnterNetns(a.netns);
  if (a.mode == "serve")
    return Serve(a);
  if (a.to.empty())
    Die(a.mode + " needs --to ADDR:PORT");
  if (a.mode == "connect")
    return Connect(a);
  if (a.mode == "bench")
    return Bench(a);
  Die("unknown mode '" + a.mode + "' (serve, connect, bench)");
}
