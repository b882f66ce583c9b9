// The lifecycle fuzzer: seeded random sequences of connection events driven through the
// real engine (proxy::Proxy in-process, one worker, io_uring or epoll) over loopback
// sockets, against hostile upstreams (scripted_upstream.h), with the engine's invariants
// checked after every sequence. It exists because the bugs that hurt a proxy live in
// the order of events: an upgrade whose upstream hangs up, then a request the proxy
// answers itself; a burst of connections; a client that resets while a retry waits.
//
// How a run is organised:
// - A seed determines a campaign: a list of sequences, each a list of events (open,
//   send a whole or partial request, reset or close at some point, read, burst,
//   sleep). Events are generated up front, independent of what happens when they run,
//   so the seed alone reproduces the campaign.
// - A forked child process runs the engine, the upstreams and the driver, and reports
//   each event before it runs and its result after, through a pipe. The parent (the
//   Catch2 test) only watches: a child killed by a signal, stopped by a sanitizer, or
//   silent for too long is a failure at the event it was running, not a dead test
//   binary. After a failure the campaign goes on in a fresh child.
// - After each sequence the child closes its connections and checks: every cluster's
//   active_requests, pending_requests and active_retries and the proxy's active_cx are
//   back to zero; the upstreams hold no busy connection; once the upstreams close
//   their idle connections, every active_connections gauge is zero and the process has
//   no more descriptors than at the start; the listener still answers well-formed
//   requests (a direct response, a proxied request, one to the circuit-broken
//   cluster); RSS grew by less than a stated margin.
// - A failure is shrunk by replaying subsets in fresh children (whole sequences first,
//   then events, then burst sizes) and printed as the seed, the failing sequence as
//   it ran, and the smallest replay that still fails, event by event.
//
// Files: lifecycle_fuzz.h (the event model), lifecycle_fuzz_child.cc (the child: engine,
// upstreams, driver, checks), this one (generation, the watching parent, shrinking,
// reports, the test cases).
//
// Modes (environment): SLUICE_FUZZ_SECONDS=N runs random seeds for N seconds per
// backend; SLUICE_FUZZ_SEED=S runs that one seed; SLUICE_FUZZ_SEQUENCES=N sets the
// sequences per campaign; SLUICE_FUZZ_SHRINK=0 reports without shrinking. See the
// "Lifecycle fuzzer" section of docs/l7-proxy.md.
#include <fcntl.h>
#include <sys/wait.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cinttypes>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <random>
#include <sstream>

#include "harness.h"
#include "lifecycle_fuzz.h"
#include "scripted_upstream.h"

namespace sluice::testing::fuzz {

// ------------------------------------------------------------------ the event model

bool UsesScript(Target t) {
  return t == Target::kUpstream || t == Target::kRetry || t == Target::kMirror ||
         t == Target::kLimited;
}

int SelfAnswer(Target t) {
  switch (t) {
    case Target::kDirect:
      return 200;
    case Target::kRedirect:
      return 301;
    case Target::kNoRoute:
      return 404;
    case Target::kNoCluster:
    case Target::kDead:
      return 503;
    case Target::kMalformed:
      return 400;  // or another 4xx/5xx: see CheckAnswer
    default:
      return 0;
  }
}

std::string Path(const Event& e) {
  if (UsesScript(e.target))
    return std::string(kTargetPrefix[static_cast<int>(e.target)]) +
           std::string(ScriptName(e.script));
  return kTargetPrefix[static_cast<int>(e.target)];
}

std::string Describe(const Event& e) {
  char buf[256];
  switch (e.kind) {
    case Event::Kind::kRequest: {
      std::string s = "s" + std::to_string(e.slot) + " ";
      if (e.target == Target::kMalformed) {
        s += "malformed #" + std::to_string(e.malformed);
      } else {
        s += e.head_method && e.body == BodyKind::kNone ? "HEAD "
             : e.body == BodyKind::kNone                ? "GET "
                                                        : "POST ";
        s += Path(e);
        if (e.body != BodyKind::kNone) {
          s += " (body " + std::to_string(e.body_len);
          s += e.body == BodyKind::kChunked  ? ", chunked)"
               : e.body == BodyKind::kExpect ? ", expect 100-continue)"
                                             : ")";
        }
        if (e.upgrade)
          s += " +upgrade: websocket";
      }
      s += ", ";
      s += kModeName[static_cast<int>(e.mode)];
      switch (e.mode) {
        case Mode::kCutHead:
        case Mode::kCutBody:
          snprintf(buf, sizeof(buf), " at %u%%, wait %d ms, %s", e.cut_permille / 10, e.wait_ms,
                   kDropName[static_cast<int>(e.drop)]);
          s += buf;
          break;
        case Mode::kDropEarly:
          snprintf(
              buf, sizeof(buf), ": wait %d ms, %s", e.wait_ms,
              kDropName[static_cast<int>(e.drop == DropKind::kLeave ? DropKind::kClose : e.drop)]);
          s += buf;
          break;
        case Mode::kMidResponse:
          s += std::string(": ") + (e.drop == DropKind::kReset ? "reset" : "close");
          break;
        default:
          break;
      }
      return s;
    }
    case Event::Kind::kRead:
      return "s" + std::to_string(e.slot) + " read (finish what the slot holds)";
    case Event::Kind::kDrop:
      return "s" + std::to_string(e.slot) +
             " drop: " + (e.drop == DropKind::kReset ? "reset" : "close");
    case Event::Kind::kBurst:
      return "burst: " + std::to_string(e.count) + " connects, then " +
             (e.drop == DropKind::kReset ? "reset" : "close") + " them all";
    case Event::Kind::kSleep:
      return "sleep " + std::to_string(e.ms) + " ms";
  }
  return "?";
}

namespace {

// SplitMix64: the same numbers from the same seed on every platform and library.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t Next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint32_t Below(uint32_t n) { return static_cast<uint32_t>(Next() % n); }
  uint32_t Between(uint32_t lo, uint32_t hi) { return lo + Below(hi - lo + 1); }
  bool Percent(uint32_t p) { return Below(100) < p; }
  // An index drawn by weight.
  template <std::size_t N>
  std::size_t Pick(const uint32_t (&weights)[N]) {
    uint32_t total = 0;
    for (uint32_t w : weights)
      total += w;
    uint32_t r = Below(total);
    for (std::size_t i = 0; i < N; ++i) {
      if (r < weights[i])
        return i;
      r -= weights[i];
    }
    return N - 1;
  }

 private:
  uint64_t s_;
};

Event RandomRequest(Rng& r) {
  Event e;
  e.kind = Event::Kind::kRequest;
  e.slot = static_cast<int>(r.Below(kSlots));
  static constexpr uint32_t kTargetWeights[] = {30, 12, 10, 12, 3, 3, 8, 2, 5, 2, 8};
  e.target = static_cast<Target>(r.Pick(kTargetWeights));
  if (UsesScript(e.target)) {
    e.upgrade = r.Percent(12);
    if (e.upgrade && r.Percent(60)) {
      static constexpr Script kUp[] = {Script::kUpgradeEcho, Script::kUpgradeClose,
                                       Script::kUpgradeReset};
      e.script = kUp[r.Below(3)];
    } else if (r.Percent(30)) {
      e.script = Script::kOk;
    } else {
      e.script = static_cast<Script>(r.Below(kNumScripts));
    }
  }
  if (e.target == Target::kMalformed) {
    e.malformed = static_cast<int>(r.Below(kMalformedKinds));
  } else {
    static constexpr uint32_t kBodyWeights[] = {63, 22, 10, 5};
    e.body = static_cast<BodyKind>(r.Pick(kBodyWeights));
    e.head_method = e.body == BodyKind::kNone && r.Percent(12);
    if (e.body != BodyKind::kNone)
      e.body_len = r.Percent(70) ? r.Between(1, 2000) : r.Between(2001, 40000);
  }
  static constexpr uint32_t kModeWeights[] = {50, 10, 8, 7, 12, 8, 5};
  e.mode = static_cast<Mode>(r.Pick(kModeWeights));
  if (e.mode == Mode::kCutBody && e.body == BodyKind::kNone)
    e.mode = Mode::kCutHead;
  static constexpr uint32_t kDropWeights[] = {45, 40, 15};
  e.drop = static_cast<DropKind>(r.Pick(kDropWeights));
  e.cut_permille = r.Between(1, 999);
  e.wait_ms = r.Percent(40) ? 0 : static_cast<int>(r.Between(1, 150));
  return e;
}

struct CampaignShape {
  int sequences = 12;
  uint32_t burst_max = 3000;
};

std::vector<Sequence> Generate(uint64_t seed, const CampaignShape& shape) {
  Rng r(seed);
  std::vector<Sequence> out;
  for (int s = 0; s < shape.sequences; ++s) {
    Sequence seq;
    int n = static_cast<int>(r.Between(3, 8));
    for (int i = 0; i < n; ++i) {
      static constexpr uint32_t kKindWeights[] = {72, 8, 8, 3, 6};
      Event e;
      switch (r.Pick(kKindWeights)) {
        case 0:
          e = RandomRequest(r);
          break;
        case 1:
          e.kind = Event::Kind::kRead;
          e.slot = static_cast<int>(r.Below(kSlots));
          break;
        case 2:
          e.kind = Event::Kind::kDrop;
          e.slot = static_cast<int>(r.Below(kSlots));
          e.drop = r.Percent(50) ? DropKind::kClose : DropKind::kReset;
          break;
        case 3:
          e.kind = Event::Kind::kBurst;
          e.count = r.Between(std::min<uint32_t>(200, shape.burst_max), shape.burst_max);
          e.drop = r.Percent(50) ? DropKind::kClose : DropKind::kReset;
          break;
        default:
          e.kind = Event::Kind::kSleep;
          e.ms = static_cast<int>(r.Between(20, 700));  // the idle timeout is 500 ms
          break;
      }
      seq.push_back(e);
    }
    out.push_back(std::move(seq));
  }
  return out;
}
// ------------------------------------------------------------------ the parent

// What one child run came to, from its reports and its exit.
struct Outcome {
  bool clean = false;  // it ran every sequence and stopped the engine
  int last_seq = -1;   // the sequence it was in when it ended
  std::string signature, detail;
  std::string where;                 // the event or check it was running
  std::vector<std::string> failing;  // the failing sequence, readable
  std::vector<std::string> all;      // every sequence it ran, readable
  std::string stderr_tail;
  std::string access_log_tail;  // the proxy's own account of the last requests
  int events = 0;
  int bursts = 0;  // burst events it ran to the end, and the largest
  long largest_burst = 0;
};

std::string SignalName(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  const char* desc = sigdescr_np(sig);
  return std::string("SIG") + (abbrev ? abbrev : std::to_string(sig).c_str()) + " (" +
         (desc ? desc : "?") + ")";
}

std::string Tail(const std::string& path, std::size_t max_lines) {
  std::ifstream f(path);
  std::vector<std::string> lines;
  std::string l;
  while (std::getline(f, l))
    lines.push_back(l);
  std::string out;
  for (std::size_t i = lines.size() > max_lines ? lines.size() - max_lines : 0; i < lines.size();
       ++i)
    out += "    | " + lines[i] + "\n";
  return out;
}

// A sanitizer's verdict from the child's stderr: "asan: SEGV", "asan: heap-use-after-free",
// "ubsan: member access within null pointer" (ASan's, which ends the process, first).
std::string SanitizerVerdict(const std::string& path) {
  std::ifstream f(path);
  std::string l, ubsan;
  while (std::getline(f, l)) {
    std::size_t at = l.find("ERROR: AddressSanitizer: ");
    if (at != std::string::npos) {
      std::string kind = l.substr(at + 25);
      return "asan: " + kind.substr(0, kind.find(' '));
    }
    if (l.find("ERROR: LeakSanitizer") != std::string::npos)
      return "lsan: leak";
    at = l.find("runtime error: ");
    if (at != std::string::npos && ubsan.empty()) {
      std::string what = l.substr(at + 15);
      ubsan = "ubsan: " + what.substr(0, what.find(" of type"));
    }
  }
  return ubsan;
}

int InactivitySeconds() {
  return kAsan ? 60 : 20;
}

// Runs seqs[first..] in a forked child and watches it.
Outcome RunOnce(const Setup& setup, const std::vector<Sequence>& seqs, std::size_t first) {
  Outcome o;
  const std::string err_path = setup.dir + "/stderr";
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) {
    o.signature = "harness: pipe";
    o.detail = std::strerror(errno);
    return o;
  }
  std::cout.flush();
  std::cerr.flush();
  pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    dup2(err, 2);
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    dup2(devnull, 1);
    RunChild(setup, seqs, first, p[1]);
  }
  close(p[1]);
  std::string pending, open_event;
  std::vector<std::string> cur;
  bool timed_out = false;
  auto line = [&](const std::string& l) {
    if (l.size() < 2)
      return;
    char tag = l[0];
    std::string text = l.substr(2);
    switch (tag) {
      case 'S':
        if (!cur.empty())
          o.all.insert(o.all.end(), cur.begin(), cur.end());
        cur.clear();
        o.last_seq = std::atoi(text.c_str());
        cur.push_back("  sequence " + text + ":");
        o.where = "the start of sequence " + text;
        break;
      case 'E': {
        std::istringstream is(text);
        int seq = 0, idx = 0;
        is >> seq >> idx;
        std::string rest;
        std::getline(is, rest);
        open_event = "e" + std::to_string(idx + 1) + ":" + rest;
        cur.push_back("    e" + std::to_string(idx + 1) + "  " + rest.substr(1));
        o.where = "while running " + open_event;
        ++o.events;
        break;
      }
      case 'R':
        if (!cur.empty())
          cur.back() += "\n          => " + text;
        if (open_event.find(": burst: ") != std::string::npos) {
          ++o.bursts;
          o.largest_burst = std::max(o.largest_burst, std::atol(text.c_str()));
        }
        o.where = "after " + open_event;
        break;
      case 'P':
        o.where = "in the " + text +
                  (o.last_seq >= 0 ? " after sequence " + std::to_string(o.last_seq)
                                   : std::string(" of the warm-up"));
        break;
      case 'C':
        cur.push_back("    (" + text + ")");
        break;
      case 'F': {
        std::size_t tab = text.find('\t');
        o.signature = text.substr(0, tab);
        o.detail = tab == std::string::npos ? "" : text.substr(tab + 1);
        break;
      }
      case 'X':
        o.clean = true;
        break;
      default:
        break;
    }
  };
  const int quiet_ms = InactivitySeconds() * 1000;
  char buf[8192];
  while (true) {
    pollfd pf{p[0], POLLIN, 0};
    int r = poll(&pf, 1, quiet_ms);
    if (r < 0 && errno == EINTR)
      continue;
    if (r == 0) {
      timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    ssize_t n = read(p[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    pending.append(buf, static_cast<std::size_t>(n));
    std::size_t nl;
    while ((nl = pending.find('\n')) != std::string::npos) {
      line(pending.substr(0, nl));
      pending.erase(0, nl + 1);
    }
  }
  close(p[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (timed_out) {
    o.clean = false;
    o.signature = "wedge: the process stopped making progress";
    o.detail = "no report for " + std::to_string(InactivitySeconds()) + " s " + o.where;
  } else if (WIFSIGNALED(status)) {
    o.clean = false;
    o.signature = "crash: " + SignalName(WTERMSIG(status));
    o.detail = "the process was killed by " + SignalName(WTERMSIG(status)) + " " + o.where;
    if (std::string v = SanitizerVerdict(err_path); !v.empty())
      o.detail += " (" + v + ")";
  } else if (WIFEXITED(status) && WEXITSTATUS(status) != 0 && o.signature.empty()) {
    o.clean = false;
    std::string v = SanitizerVerdict(err_path);
    o.signature = v.empty() ? "exit: status " + std::to_string(WEXITSTATUS(status)) : v;
    o.detail =
        "the process exited with status " + std::to_string(WEXITSTATUS(status)) + " " + o.where;
  } else if (!o.clean && o.signature.empty()) {
    o.signature = "exit: the run ended early";
    o.detail = "the process exited " + o.where + " without finishing";
  }
  if (!o.signature.empty())
    cur.push_back("    ** " + o.signature + ": " + o.detail);
  o.failing = cur;
  o.all.insert(o.all.end(), cur.begin(), cur.end());
  if (!o.clean) {
    o.stderr_tail = Tail(err_path, kAsan ? 60 : 25);
    o.access_log_tail = Tail(setup.dir + "/access.log", 6);
  }
  return o;
}

std::string Join(const std::vector<std::string>& lines) {
  std::string s;
  for (const auto& l : lines)
    s += l + "\n";
  return s;
}

// Delta debugging over a list (complements only): the smallest list for which
// fails() holds, within the budget.
template <class T, class F>
std::vector<T> Minimize(std::vector<T> items, F fails, const std::function<bool()>& budget_left) {
  std::size_t n = 2;
  while (items.size() >= 2 && budget_left()) {
    std::size_t chunk = (items.size() + n - 1) / n;
    bool reduced = false;
    for (std::size_t start = 0; start < items.size() && budget_left(); start += chunk) {
      std::vector<T> rest;
      for (std::size_t i = 0; i < items.size(); ++i) {
        if (i < start || i >= start + chunk)
          rest.push_back(items[i]);
      }
      if (!rest.empty() && fails(rest)) {
        items = std::move(rest);
        n = std::max<std::size_t>(n - 1, 2);
        reduced = true;
        break;
      }
    }
    if (!reduced) {
      if (n >= items.size())
        break;
      n = std::min(items.size(), n * 2);
    }
  }
  return items;
}

struct ShrinkBudget {
  int64_t deadline_ms = 0;
  int replays_left = 0;
  int per_failure = 16;  // replays one failure may use
  bool Left() const { return replays_left > 0 && NowMs() < deadline_ms; }
};

// Replays the failing part of a campaign in fresh children and cuts it down to the
// smallest list of events that still fails the same way; returns it, readable.
std::string Shrink(const Setup& setup, const std::vector<Sequence>& seqs, std::size_t first,
                   int failing, const std::string& signature, ShrinkBudget& budget) {
  int replays = 0;
  Outcome last;
  auto left = [&] { return budget.Left() && replays < budget.per_failure; };
  auto fails = [&](const std::vector<Sequence>& cand) {
    if (!left())
      return false;
    --budget.replays_left;
    ++replays;
    Outcome o = RunOnce(setup, cand, 0);
    if (o.signature == signature) {
      last = o;
      return true;
    }
    return false;
  };
  // The failing sequence alone, then with the one before, then everything since the
  // process started (state left by earlier sequences may be needed).
  std::vector<Sequence> chosen;
  std::vector<std::vector<Sequence>> tries;
  tries.push_back({seqs[static_cast<std::size_t>(failing)]});
  if (static_cast<std::size_t>(failing) > first)
    tries.push_back(
        {seqs[static_cast<std::size_t>(failing) - 1], seqs[static_cast<std::size_t>(failing)]});
  if (static_cast<std::size_t>(failing) > first + 1)
    tries.push_back(std::vector<Sequence>(seqs.begin() + static_cast<std::ptrdiff_t>(first),
                                          seqs.begin() + failing + 1));
  for (auto& t : tries) {
    if (fails(t)) {
      chosen = t;
      break;
    }
  }
  if (chosen.empty() && replays == 0)
    return "  not replayed: the run's shrinking budget is spent (SLUICE_FUZZ_SEED=<seed> "
           "runs this seed alone)\n";
  if (chosen.empty())
    return "  not reproduced by a replay in a fresh process (" + std::to_string(replays) +
           " tries): timing-dependent, or needs more history than was replayed\n";
  if (chosen.size() > 1)
    chosen = Minimize(chosen, fails, left);
  // Events: flattened, each tagged with its sequence, so the settle points stay.
  std::vector<std::pair<std::size_t, Event>> flat;
  for (std::size_t i = 0; i < chosen.size(); ++i) {
    for (const Event& e : chosen[i])
      flat.emplace_back(i, e);
  }
  auto rebuild = [&](const std::vector<std::pair<std::size_t, Event>>& f) {
    std::vector<Sequence> out;
    std::size_t cur = SIZE_MAX;
    for (const auto& [i, e] : f) {
      if (i != cur) {
        out.emplace_back();
        cur = i;
      }
      out.back().push_back(e);
    }
    return out;
  };
  flat = Minimize(
      flat, [&](const std::vector<std::pair<std::size_t, Event>>& f) { return fails(rebuild(f)); },
      left);
  // Bursts: halve while it still fails, to show the size that matters.
  std::string burst_note;
  for (auto& [i, e] : flat) {
    if (e.kind != Event::Kind::kBurst)
      continue;
    while (e.count > 50 && left()) {
      Event smaller = e;
      smaller.count = e.count / 2;
      auto trial = flat;
      for (auto& [j, t] : trial) {
        if (t.kind == Event::Kind::kBurst && t.count == e.count)
          t = smaller;
      }
      if (!fails(rebuild(trial))) {
        burst_note = "  (a burst of " + std::to_string(e.count) + " fails; one of " +
                     std::to_string(smaller.count) + " did not)\n";
        break;
      }
      e = smaller;
    }
  }
  // The last replay that failed is the one to show; run the final list once more if
  // the last replay was of something else.
  std::vector<Sequence> final_list = rebuild(flat);
  Outcome shown = last;
  if (budget.replays_left > 0 && NowMs() < budget.deadline_ms) {
    Outcome o = RunOnce(setup, final_list, 0);
    ++replays;
    if (o.signature == signature)
      shown = o;
  }
  std::size_t events = flat.size();
  return "  smallest replay that still fails: " + std::to_string(events) + " event(s) in " +
         std::to_string(final_list.size()) + " sequence(s), found in " + std::to_string(replays) +
         " replays; each sequence is followed by the checks:\n" + burst_note + Join(shown.all);
}

struct Failure {
  uint64_t seed = 0;
  int sequence = 0;
  Outcome outcome;
  std::string minimal;
  std::vector<std::string> again;  // later hits of the same signature: "seed 3 seq 7"
};

struct Campaign {
  int sequences = 0, events = 0, restarts = 0, failures = 0, bursts = 0;
  long largest_burst = 0;
  bool cut_short = false;  // sequences were left unrun after a failure
  double seconds = 0;
};

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// One campaign: the seed's sequences in a child, restarted after each failure (at most
// max_restarts times, until restart_until_ms: a bad tree must still finish within the
// test's timeout).
Campaign RunCampaign(proxy::IoBackend backend, uint64_t seed, const CampaignShape& shape,
                     std::vector<Failure>& failures, ShrinkBudget& budget, int64_t restart_until_ms,
                     int max_restarts) {
  Campaign c;
  auto t0 = Clock::now();
  TempDir dir;
  Setup setup{backend, dir.path()};
  std::vector<Sequence> seqs = Generate(seed, shape);
  const bool shrink = Env("SLUICE_FUZZ_SHRINK") != "0";
  std::size_t first = 0;
  while (first < seqs.size()) {
    Outcome o = RunOnce(setup, seqs, first);
    c.events += o.events;
    c.bursts += o.bursts;
    c.largest_burst = std::max(c.largest_burst, o.largest_burst);
    if (o.clean) {
      c.sequences += static_cast<int>(seqs.size() - first);
      break;
    }
    int at = o.last_seq;
    ++c.failures;
    c.sequences += at >= static_cast<int>(first) ? at - static_cast<int>(first) + 1 : 0;
    auto same = std::find_if(failures.begin(), failures.end(),
                             [&](const Failure& f) { return f.outcome.signature == o.signature; });
    if (same != failures.end()) {
      same->again.push_back("seed " + std::to_string(seed) + " sequence " + std::to_string(at));
    } else {
      Failure f;
      f.seed = seed;
      f.sequence = at;
      f.outcome = o;
      if (at >= 0 && shrink)
        f.minimal = Shrink(setup, seqs, first, at, o.signature, budget);
      failures.push_back(std::move(f));
    }
    if (at < 0 || ++c.restarts > max_restarts || NowMs() > restart_until_ms) {
      c.cut_short = at >= 0 && static_cast<std::size_t>(at) + 1 < seqs.size();
      break;  // the set-up itself failed, this seed fails everywhere, or time is up
    }
    first = static_cast<std::size_t>(at) + 1;
  }
  c.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return c;
}

std::string Report(const Failure& f, std::size_t n, std::size_t total, const char* backend,
                   const std::string& test_name, const CampaignShape& shape) {
  const Outcome& o = f.outcome;
  std::string s = "lifecycle fuzz FAILURE " + std::to_string(n) + " of " + std::to_string(total) +
                  " [" + backend + ", seed " + std::to_string(f.seed) + ", sequence " +
                  std::to_string(f.sequence) + "]: " + o.signature + "\n  " + o.detail + "\n";
  s += "  reproduce: SLUICE_FUZZ_SEED=" + std::to_string(f.seed) +
       (shape.sequences != 12 ? " SLUICE_FUZZ_SEQUENCES=" + std::to_string(shape.sequences)
                              : std::string()) +
       " build/tests/proxy/proxy_lifecycle_fuzz '" + test_name + "'\n";
  s += "  the failing sequence as it ran:\n" + Join(o.failing);
  if (!f.minimal.empty())
    s += f.minimal;
  if (!f.again.empty()) {
    s += "  the same failure again at:";
    for (const auto& a : f.again)
      s += " [" + a + "]";
    s += "\n";
  }
  if (!o.access_log_tail.empty())
    s += "  the proxy's access log, last lines:\n" + o.access_log_tail;
  if (!o.stderr_tail.empty())
    s += "  the process's stderr, last lines:\n" + o.stderr_tail;
  return s;
}

void RunFuzz(proxy::IoBackend backend, const std::vector<uint64_t>& ci_seeds,
             const std::string& test_name) {
  const char* name = proxy::IoBackendName(backend);
  CampaignShape shape;
  if (std::string v = Env("SLUICE_FUZZ_SEQUENCES"); !v.empty())
    shape.sequences = std::max(1, std::atoi(v.c_str()));
  std::vector<uint64_t> seeds = ci_seeds;
  int64_t deadline = 0;
  if (std::string v = Env("SLUICE_FUZZ_SEED"); !v.empty()) {
    seeds = {std::strtoull(v.c_str(), nullptr, 10)};
  } else if (std::string secs = Env("SLUICE_FUZZ_SECONDS"); !secs.empty()) {
    deadline = NowMs() + 1000 * std::atoll(secs.c_str());
    seeds.clear();
    if (Env("SLUICE_FUZZ_SEQUENCES").empty())
      shape.sequences = 40;
  }
  std::vector<Failure> failures;
  // Shrinking is bounded so a bad tree still finishes within the test's timeout.
  ShrinkBudget budget{NowMs() + (deadline ? 600000 : 30000), deadline ? 400 : 40,
                      deadline ? 60 : 16};
  std::random_device rd;
  // The bounded campaign stops restarting failed runs after this, so a bad tree still
  // finishes within the test's 120 s timeout.
  const int64_t soft_end = NowMs() + 70000;
  int total_seq = 0, total_ev = 0;
  auto t0 = Clock::now();
  for (std::size_t i = 0; deadline ? NowMs() < deadline : i < seeds.size(); ++i) {
    uint64_t seed = deadline ? (static_cast<uint64_t>(rd()) << 32 | rd()) : seeds[i];
    std::size_t before = failures.size();
    const int64_t restart_until = deadline ? deadline : soft_end;
    Campaign c =
        RunCampaign(backend, seed, shape, failures, budget, restart_until, deadline ? 1000 : 8);
    total_seq += c.sequences;
    total_ev += c.events;
    std::string found;
    for (std::size_t k = before; k < failures.size(); ++k)
      found += (found.empty() ? "" : "; ") + failures[k].outcome.signature;
    fprintf(stderr,
            "[lifecycle fuzz %s] seed %" PRIu64
            ": %d sequences, %d events (%d bursts, largest %ld), %.1f s, %d failed%s%s%s\n",
            name, seed, c.sequences, c.events, c.bursts, c.largest_burst, c.seconds, c.failures,
            found.empty() ? "" : ", new: ", found.c_str(),
            c.cut_short ? " (stopped after a failure: time limit)" : "");
  }
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  fprintf(stderr,
          "[lifecycle fuzz %s] total: %d sequences, %d events, %.1f s, %zu distinct failures\n",
          name, total_seq, total_ev, secs, failures.size());
  for (std::size_t i = 0; i < failures.size(); ++i)
    FAIL_CHECK(Report(failures[i], i + 1, failures.size(), name, test_name, shape));
  CHECK(failures.empty());
}

// The seeds of the bounded campaign; each runs 12 sequences of 3-8 events.
const std::vector<uint64_t> kCiSeeds = {1, 2, 3, 4, 5};

}  // namespace

}  // namespace sluice::testing::fuzz

using sluice::testing::fuzz::kCiSeeds;
using sluice::testing::fuzz::RunFuzz;
namespace proxy = sluice::proxy;

TEST_CASE(
    "lifecycle fuzz on io_uring: the engine survives and its gauges return to zero and its "
    "listener answers",
    "[proxy][fuzz]") {
  RunFuzz(proxy::IoBackend::kUring, kCiSeeds,
          "lifecycle fuzz on io_uring: the engine survives and its gauges return to zero and its "
          "listener answers");
}

TEST_CASE(
    "lifecycle fuzz on epoll: the engine survives and its gauges return to zero and its listener "
    "answers",
    "[proxy][fuzz]") {
  RunFuzz(proxy::IoBackend::kEpoll, kCiSeeds,
          "lifecycle fuzz on epoll: the engine survives and its gauges return to zero and its "
          "listener answers");
}
