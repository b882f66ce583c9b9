// The ADS server: one handler thread and one reader thread per stream, and the SotW
// protocol rules (subscriptions, what each request and push sends) in Session below.
#include "sluice/xds/ads_server.h"
#include "sluice/xds/node.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <sys/resource.h>
#include <unistd.h>
#include <algorithm>
#include <deque>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "envoy/service/discovery/v3/ads.grpc.pb.h"
#include "envoy/service/discovery/v3/discovery.pb.h"

namespace sluice::xds {
namespace {

using envoy::service::discovery::v3::DeltaDiscoveryRequest;
using envoy::service::discovery::v3::DeltaDiscoveryResponse;
using envoy::service::discovery::v3::DiscoveryRequest;
using envoy::service::discovery::v3::DiscoveryResponse;
using Event = AdsServerEvent;

std::string DeterministicBytes(const google::protobuf::Message& m) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream sos(&bytes);
    google::protobuf::io::CodedOutputStream cos(&sos);
    cos.SetSerializationDeterministic(true);
    m.SerializeToCodedStream(&cos);
  }
  return bytes;
}

bool IsWildcardType(const std::string& type) {
  return type == kClusterType || type == kListenerType;
}

// Calls f(name, message) for every resource of `type` in `rs`.
template <class F>
bool ForEachOfType(const ResourceSet& rs, const std::string& type, F&& f) {
  auto each = [&f](const auto& m) {
    for (const auto& [name, r] : m)
      f(name, static_cast<const google::protobuf::Message&>(r));
  };
  if (type == kClusterType) {
    each(rs.clusters);
  } else if (type == kEndpointType) {
    each(rs.endpoints);
  } else if (type == kListenerType) {
    each(rs.listeners);
  } else if (type == kRouteType) {
    each(rs.routes);
  } else if (type == kSecretType) {
    each(rs.secrets);
  } else {
    return false;
  }
  return true;
}

Result<std::string> ReadFile(const std::string& path, std::string_view what) {
  std::ifstream in(path);
  if (!in)
    return FailErrno(fmt::format("{} {}", what, path), errno);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool IsSupportedType(const std::string& type) {
  return type == kClusterType || type == kEndpointType || type == kListenerType ||
         type == kRouteType || type == kSecretType;
}

// What one stream serves: the node's ResourceSet, and a hash of each resource's bytes kept
// between pushes, so a push with a hint hashes only what the hint names.
class ServedSet {
 public:
  struct Item {
    std::string name;
    const google::protobuf::Message* msg = nullptr;
    std::shared_ptr<const google::protobuf::Message> owned;  // an alias's renamed copy
    uint64_t hash = 0;
    std::string bytes;  // set when hashing needed them
    const std::string& Bytes() {
      if (bytes.empty())
        bytes = DeterministicBytes(*msg);
      return bytes;
    }
  };

  const ResourceSet& rs() const { return *rs_; }

  // A full recompute: every hash is recomputed when next needed.
  void Reset(std::shared_ptr<const ResourceSet> rs) {
    previous_ = std::move(rs_);
    rs_ = rs ? std::move(rs) : std::make_shared<const ResourceSet>();
    hashes_.clear();
  }
  // A push with a hint: only the named resources may differ from the previous set.
  void Update(std::shared_ptr<const ResourceSet> rs, const PushHint& hint) {
    previous_ = std::move(rs_);
    rs_ = rs ? std::move(rs) : std::make_shared<const ResourceSet>();
    for (const auto& [type, names] : hint.changed) {
      auto it = hashes_.find(type);
      if (it == hashes_.end())
        continue;
      for (const auto& n : names)
        it->second.erase(n);
    }
  }
  // The set replaced by the last Reset/Update, once the push's responses are written.
  std::shared_ptr<const ResourceSet> TakePrevious() { return std::move(previous_); }

  bool Has(const std::string& type, const std::string& name) const {
    return Find(type, name) != nullptr;
  }

  // The resource `name` of `type`; with `named`, a listener alias resolves to the
  // canonical listener under the alias's name (served only to a subscription naming it).
  std::optional<Item> Get(const std::string& type, const std::string& name, bool named) {
    if (const auto* m = Find(type, name))
      return Make(type, name, *m);
    if (!named || type != kListenerType)
      return std::nullopt;
    auto alias = rs_->listener_aliases.find(name);
    if (alias == rs_->listener_aliases.end())
      return std::nullopt;
    auto l = rs_->listeners.find(alias->second);
    if (l == rs_->listeners.end())
      return std::nullopt;
    auto copy = std::make_shared<envoy::config::listener::v3::Listener>(l->second);
    copy->set_name(name);
    Item i{name, copy.get(), copy, 0, DeterministicBytes(*copy)};
    i.hash = std::hash<std::string>{}(i.bytes);  // aliases are rare: not cached
    return i;
  }

  // Calls f(Item&&) for every canonical resource of `type`.
  template <class F>
  void ForEach(const std::string& type, F&& f) {
    ForEachOfType(*rs_, type, [&](const std::string& name, const google::protobuf::Message& m) {
      f(Make(type, name, m));
    });
  }

  // The names a hint gives for `type`, plus the aliases in `named` of hinted listeners.
  std::set<std::string> Hinted(const std::string& type, const PushHint& hint,
                               const std::set<std::string>& named) const {
    std::set<std::string> out;
    auto it = hint.changed.find(type);
    if (it != hint.changed.end())
      out = it->second;
    if (type == kListenerType && it != hint.changed.end()) {
      for (const auto& n : named) {
        auto a = rs_->listener_aliases.find(n);
        if (a != rs_->listener_aliases.end() && it->second.contains(a->second))
          out.insert(n);
      }
    }
    return out;
  }

 private:
  const google::protobuf::Message* Find(const std::string& type, const std::string& name) const {
    auto find = [&](const auto& m) -> const google::protobuf::Message* {
      auto it = m.find(name);
      return it == m.end() ? nullptr : &it->second;
    };
    if (type == kClusterType)
      return find(rs_->clusters);
    if (type == kEndpointType)
      return find(rs_->endpoints);
    if (type == kListenerType)
      return find(rs_->listeners);
    if (type == kRouteType)
      return find(rs_->routes);
    if (type == kSecretType)
      return find(rs_->secrets);
    return nullptr;
  }

  Item Make(const std::string& type, const std::string& name, const google::protobuf::Message& m) {
    Item i{name, &m, nullptr, 0, {}};
    auto& cache = hashes_[type];
    if (auto h = cache.find(name); h != cache.end()) {
      i.hash = h->second;
    } else {
      i.bytes = DeterministicBytes(m);
      i.hash = std::hash<std::string>{}(i.bytes);
      cache.emplace(name, i.hash);
    }
    return i;
  }

  std::shared_ptr<const ResourceSet> rs_ = std::make_shared<const ResourceSet>();
  std::shared_ptr<const ResourceSet> previous_;
  std::map<std::string, std::unordered_map<std::string, uint64_t>> hashes_;  // type -> name -> hash
};

// The version of one resource in Delta responses: its hash, in hex.
std::string VersionOf(uint64_t hash) {
  return fmt::format("{:016x}", hash);
}

}  // namespace

// What the server shares with one stream's threads.
struct AdsServer::Stream {
  std::mutex mu;
  std::condition_variable cv;
  bool reader_done = false;
  bool stopping = false;
  uint64_t pushed = 0;     // latest version Push() asked for
  bool push_full = false;  // a push without hint is pending
  PushHint hint;           // merged hints of the pending pushes
  grpc::ServerContext* ctx = nullptr;
};

// Frees the resource sets streams replace, on one thread of lower priority (nice kNice):
// the last reference to a replaced set is often a stream's, and freeing 10,000 services'
// messages on the stream's thread delays what gRPC still has to send, on a busy machine.
// Memory stays bounded: past kMaxQueued sets waiting, the caller frees its own.
class AdsServer::Reclaimer {
 public:
  static constexpr size_t kMaxQueued = 2;
  static constexpr int kNice = 5;
  Reclaimer() : thread_([this] { Run(); }) {}
  ~Reclaimer() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  void Drop(std::shared_ptr<const ResourceSet> rs) {
    if (!rs)
      return;
    std::unique_lock lock(mu_);
    if (queue_.size() >= kMaxQueued) {
      lock.unlock();
      rs.reset();  // the reclaimer is behind: this one is freed here
      return;
    }
    queue_.push_back(std::move(rs));
    cv_.notify_one();
  }

 private:
  void Run() {
    setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), kNice);  // this thread; best effort
    std::unique_lock lock(mu_);
    while (true) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty())
        return;  // stopping, and nothing left to free
      auto rs = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      rs.reset();
      lock.lock();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<const ResourceSet>> queue_;
  bool stop_ = false;
  std::thread thread_;
};

class AdsServer::Service final
    : public envoy::service::discovery::v3::AggregatedDiscoveryService::Service {
 public:
  explicit Service(AdsServer& owner) : owner_(owner) {}
  std::string required_token;
  std::function<Result<std::vector<std::string>>(const std::string&)> authenticate;

  grpc::Status StreamAggregatedResources(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<DiscoveryResponse, DiscoveryRequest>* stream) override;
  grpc::Status DeltaAggregatedResources(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<DeltaDiscoveryResponse, DeltaDiscoveryRequest>* stream) override;

 private:
  template <class SessionT, class Req, class Resp>
  grpc::Status Serve(grpc::ServerContext* ctx, grpc::ServerReaderWriter<Resp, Req>* stream);
  AdsServer& owner_;
};

namespace {

// Common to both protocols' sessions: the node, what it is served, and events.
class SessionBase {
 public:
  SessionBase(AdsServer::SharedResourceFn& fn, AdsServer::EventFn& on_event, bool delta)
      : fn_(fn), on_event_(on_event), delta_(delta) {}
  const std::string& node_id() const { return node_.id(); }
  bool has_node() const { return has_node_; }

 protected:
  // The stream's first request: takes the node and computes its set.
  void Connect(const envoy::config::core::v3::Node& node, uint64_t version) {
    node_ = node;
    has_node_ = true;
    Recompute(version, nullptr);
  }
  void Recompute(uint64_t version, const PushHint* hint) {
    if (hint)
      served_.Update(fn_(node_), *hint);
    else
      served_.Reset(fn_(node_));
    version_ = version;
  }
  void Emit(Event e) {
    if (!on_event_)
      return;
    e.node_id = node_.id();
    e.delta = delta_;
    on_event_(e);
  }
  bool Observed() const { return static_cast<bool>(on_event_); }
  // Hands a replaced set to the reclaimer, so freeing it (tens of ms at 10,000 services)
  // competes with no response of this or another stream.
  void Drop(std::shared_ptr<const ResourceSet> rs);

 public:
  AdsServer::Reclaimer* reclaimer = nullptr;

 protected:
  AdsServer::SharedResourceFn& fn_;
  AdsServer::EventFn& on_event_;
  const bool delta_;
  envoy::config::core::v3::Node node_;
  bool has_node_ = false;
  ServedSet served_;
  uint64_t version_ = 0;
  uint64_t nonce_ = 0;
};

void SessionBase::Drop(std::shared_ptr<const ResourceSet> rs) {
  if (reclaimer && rs && rs.use_count() == 1)
    reclaimer->Drop(std::move(rs));  // the last reference: freeing it is real work
}

double Ms(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// The protocol state of one SotW stream, used only on its handler thread.
//
// The rules follow Envoy's xds_protocol.rst (section names in the comments below) and,
// where the spec leaves a choice, istiod (pkg/xds/server.go ShouldRespond, pilot/pkg/xds).
class Session : public SessionBase {
 public:
  using Request = DiscoveryRequest;
  using Response = DiscoveryResponse;
  Session(AdsServer::SharedResourceFn& fn, AdsServer::EventFn& on_event,
          grpc::ServerReaderWriter<DiscoveryResponse, DiscoveryRequest>* stream)
      : SessionBase(fn, on_event, false), stream_(stream) {}

  // Returns an error status to end the stream with, or OK to go on.
  grpc::Status OnRequest(const DiscoveryRequest& req, uint64_t version) {
    if (!has_node_) {
      if (!req.has_node() || req.node().id().empty()) {
        return {grpc::StatusCode::INVALID_ARGUMENT, "the first request must carry node.id"};
      }
      Connect(req.node(), version);
      Emit(Event::Kind::kConnect, req);
    }
    const std::string& type = req.type_url();
    Emit(Event::Kind::kRequest, req);
    PerType& t = types_[type];
    // A nonce for a type this stream never answered comes from an earlier stream (a
    // reconnect): it is a new subscription, as istiod treats it.
    const bool answered = !t.last_nonce.empty();
    if (answered && !req.response_nonce().empty() && req.response_nonce() != t.last_nonce) {
      Emit(Event::Kind::kStale, req);  // answers a response we have since replaced
      return grpc::Status::OK;
    }
    const bool is_new = !answered || req.response_nonce().empty();
    const bool nack = req.has_error_detail();
    const Change change = SetSubscription(t, type, req);
    if (!IsSupportedType(type))
      return AnswerUnsupported(type, t, req, is_new && !nack, change);
    if (nack) {
      spdlog::warn("xds server: {} NACKed {} version {}: {}", node_.id(), type, t.sent_version,
                   req.error_detail().message());
      Emit(Event::Kind::kNack, req);
    } else if (!is_new) {
      Emit(Event::Kind::kAck, req);  // matches our last nonce
    }
    if (is_new && !nack) {
      Send(type, t, Why::kNewSubscription, Change{});
    } else if (change.changed) {
      Send(type, t, nack ? Why::kNackedChange : Why::kChange, change);
    }
    return grpc::Status::OK;
  }

  // A push: a full recompute without hint, else only the hinted resources are compared.
  void OnPush(uint64_t version, const PushHint* hint) {
    if (!has_node_ || version <= version_)
      return;
    auto t0 = std::chrono::steady_clock::now();
    Recompute(version, hint);
    auto t1 = std::chrono::steady_clock::now();
    // CDS before EDS before SDS before LDS before RDS, so a client never sees a reference
    // first.
    for (auto type : {kClusterType, kEndpointType, kSecretType, kListenerType, kRouteType}) {
      auto it = types_.find(std::string(type));
      if (it == types_.end())
        continue;
      if (hint)
        SendHinted(it->first, it->second, *hint);
      else
        Send(it->first, it->second, Why::kPush, Change{});
    }
    spdlog::debug("xds server: {} push {}{}: resources {:.2f} ms, diff and send {:.2f} ms",
                  node_.id(), version, hint ? " (hinted)" : "", Ms(t1 - t0),
                  Ms(std::chrono::steady_clock::now() - t1));
    Drop(served_.TakePrevious());
  }

 private:
  struct PerType {
    bool requested = false;  // a request of this type has arrived on this stream
    // "How the client specifies what resources to return": an LDS/CDS stream whose first
    // request named nothing is a (legacy) wildcard, and stays one while the client keeps
    // sending empty lists (as Envoy does in its ACKs). Once it names anything, "*"
    // included, an empty list means "no longer interested in any resource of the type".
    bool legacy_wildcard = false;
    bool wildcard = false;        // "*" (or legacy): everything this node is served
    std::set<std::string> names;  // explicitly named, "*" excluded
    // What the client holds from us: name -> hash of the bytes last sent. Unsubscribed
    // names are dropped, so subscribing to one again sends it again, as the spec asks.
    std::map<std::string, uint64_t> sent;
    std::string last_nonce, sent_version;
    bool warned = false;  // an unsupported type has been logged
  };
  struct Change {
    bool changed = false;         // the subscription differs from the previous one
    std::set<std::string> added;  // newly named
    bool wildcard_added = false;  // "*" (or legacy wildcard) is new
    bool dropped = false;         // something the client held is no longer subscribed
  };
  enum class Why { kNewSubscription, kChange, kNackedChange, kPush };
  using Item = ServedSet::Item;

  static Change SetSubscription(PerType& t, const std::string& type, const DiscoveryRequest& req) {
    std::set<std::string> names(req.resource_names().begin(), req.resource_names().end());
    bool wildcard = false;
    if (IsWildcardType(type)) {
      if (!t.requested && names.empty())
        t.legacy_wildcard = true;  // the first request named nothing
      else if (!names.empty())
        t.legacy_wildcard = false;  // from now on [] means "unsubscribe from all"
      wildcard = t.legacy_wildcard || names.erase("*") > 0;
    }
    t.requested = true;
    Change c;
    c.wildcard_added = wildcard && !t.wildcard;
    for (const auto& n : names)
      if (!t.names.contains(n))
        c.added.insert(n);
    c.changed = wildcard != t.wildcard || names != t.names;
    t.wildcard = wildcard;
    t.names = std::move(names);
    if (!t.wildcard) {
      // The client drops what it unsubscribed from ("Unsubscribing From Resources").
      std::erase_if(t.sent, [&](const auto& kv) {
        bool gone = !t.names.contains(kv.first);
        c.dropped = c.dropped || gone;
        return gone;
      });
    }
    return c;
  }

  // The resources of `type` the subscription covers, by name: for a wildcard, every
  // resource of the type (listener aliases excluded), plus any explicitly named ones.
  // A named LDS name that is no listener but an alias gets the canonical listener under
  // the alias's name. Names that match nothing are simply absent.
  std::vector<Item> Covered(const std::string& type, const PerType& t) {
    std::vector<Item> out;
    if (t.wildcard)
      served_.ForEach(type, [&](Item&& i) { out.push_back(std::move(i)); });
    for (const auto& name : t.names) {
      if (t.wildcard && served_.Has(type, name))
        continue;  // already in
      if (auto i = served_.Get(type, name, true))
        out.push_back(std::move(*i));
    }
    std::ranges::sort(out, {}, &Item::name);  // Send() looks names up in it
    return out;
  }

  // The subscription's view of one name: the resource it is served under that name, if any.
  std::optional<Item> CoveredOne(const std::string& type, const PerType& t,
                                 const std::string& name) {
    const bool named = t.names.contains(name);
    if (!named && !t.wildcard)
      return std::nullopt;
    return served_.Get(type, name, named);
  }

  // Decides what one response of `type` carries, if any, and sends it.
  //
  // LDS/CDS ("Grouping Resources into Responses"): every response carries the complete
  // set the subscription covers, and a resource missing from it is deleted by the client
  // ("Deleting Resources"). So:
  // - a new subscription is answered with the set; a named one whose names match nothing
  //   this node has gets no response (the client's does-not-exist timer handles them,
  //   "Knowing When a Requested Resource Does Not Exist"); a wildcard one is answered
  //   even when empty, since there the absence is the answer;
  // - a changed subscription (as istiod answers changes of wildcard-capable types) is
  //   answered with the new set unless that set is empty and not a wildcard: after
  //   "unsubscribe from all" (`[]` once names were used) the client holds nothing of the
  //   type and wants nothing, so an empty "delete everything" response would be noise;
  // - a NACK that changes the subscription is answered only if it subscribes to something
  //   that exists and the client does not hold. The complete set then necessarily carries
  //   the rejected resources again, unchanged (the spec's two requirements, the new names
  //   and the complete set, leave no other choice); Envoy and gRPC apply the valid
  //   resources of a response and NACK the rest once more, and that second NACK changes
  //   nothing, so it is not answered. A NACK that only drops names is not answered, as
  //   istiod answers no NACK;
  // - a push sends the set when any covered resource changed, appeared or went away.
  //
  // EDS/RDS: responses carry only what the client lacks ("Grouping Resources into
  // Responses" allows it for these types; istiod sends only the newly subscribed names):
  // - a new subscription gets the named resources that exist, and nothing if none does;
  // - a changed subscription (ACK or NACK) gets only the newly named resources, and
  //   nothing if there are none, so a NACK never brings back what it rejected;
  // - a push sends the covered resources that changed or appeared; removals send nothing
  //   (the parent resource stops referring to them).
  void Send(const std::string& type, PerType& t, Why why, const Change& change) {
    const bool whole = IsWildcardType(type);
    std::vector<Item> covered = Covered(type, t);
    auto held = [&](const Item& i) { return t.sent.contains(i.name); };
    auto fresh = [&](const Item& i) {  // not held, or held with other content
      auto old = t.sent.find(i.name);
      return old == t.sent.end() || old->second != i.hash;
    };
    auto named_now = [&](const Item& i) { return change.added.contains(i.name); };
    std::vector<Item*> out;
    bool send = false;
    if (whole) {
      switch (why) {
        case Why::kNewSubscription:
          send = t.wildcard || !covered.empty();
          break;
        case Why::kChange:
          send = change.wildcard_added || std::ranges::any_of(covered, named_now) ||
                 (change.dropped && (t.wildcard || !covered.empty()));
          break;
        case Why::kNackedChange:
          send = std::ranges::any_of(covered, [&](const Item& i) {
            return !held(i) && (change.wildcard_added || named_now(i));
          });
          break;
        case Why::kPush:
          send = covered.size() != t.sent.size() || std::ranges::any_of(covered, fresh);
          break;
      }
      if (send) {
        t.sent.clear();  // the complete set replaces what the client held
        for (auto& i : covered)
          out.push_back(&i);
      }
    } else {
      if (why == Why::kNewSubscription)
        t.sent.clear();
      if (why == Why::kPush) {  // what went away needs no message: its parent changed
        std::erase_if(t.sent, [&](const auto& kv) {
          return !std::ranges::binary_search(covered, kv.first, {}, &Item::name);
        });
      }
      for (auto& i : covered) {
        if (why == Why::kNewSubscription || (why == Why::kPush && fresh(i)) ||
            (why != Why::kPush && named_now(i)))
          out.push_back(&i);
      }
      send = !out.empty();
    }
    if (send)
      Write(type, t, out);
  }

  // A push with a hint: only the hinted names are looked at. CDS/LDS send the complete
  // set when one of them changed, appeared or went away for this subscription; EDS/RDS
  // send the hinted resources that changed or appeared.
  void SendHinted(const std::string& type, PerType& t, const PushHint& hint) {
    const std::set<std::string> names = served_.Hinted(type, hint, t.names);
    if (names.empty())
      return;
    if (IsWildcardType(type)) {
      bool changed = false;
      for (const auto& n : names) {
        auto i = CoveredOne(type, t, n);
        auto old = t.sent.find(n);
        if (i ? old == t.sent.end() || old->second != i->hash : old != t.sent.end()) {
          changed = true;
          break;
        }
      }
      if (changed)
        Send(type, t, Why::kPush, Change{});
      return;
    }
    std::vector<Item> items;
    for (const auto& n : names) {
      auto i = CoveredOne(type, t, n);
      auto old = t.sent.find(n);
      if (!i) {
        if (old != t.sent.end())
          t.sent.erase(old);  // gone: its parent stops referring to it
      } else if (old == t.sent.end() || old->second != i->hash) {
        items.push_back(std::move(*i));
      }
    }
    if (items.empty())
      return;
    std::vector<Item*> out;
    for (auto& i : items)
      out.push_back(&i);
    Write(type, t, out);
  }

  void Write(const std::string& type, PerType& t, const std::vector<Item*>& out) {
    DiscoveryResponse resp;
    resp.set_type_url(type);
    resp.set_version_info(std::to_string(version_));
    resp.set_nonce(std::to_string(++nonce_));
    for (Item* i : out) {
      auto* any = resp.add_resources();
      any->set_type_url(type);
      any->set_value(i->Bytes());
      t.sent[i->name] = i->hash;
    }
    t.last_nonce = resp.nonce();
    t.sent_version = resp.version_info();
    stream_->Write(resp);
    if (Observed()) {
      Event e{Event::Kind::kResponse, {}, type, resp.version_info(), resp.nonce(), {}, {}};
      for (Item* i : out)
        e.resource_names.push_back(i->name);
      SessionBase::Emit(std::move(e));
    }
  }

  // A type this server does not serve (SDS, or anything else) is answered, not ignored:
  // with an empty response carrying version and nonce, as istiod answers types it has no
  // generator for ("an empty response, to not break waiting code"), so the client's watch
  // resolves instead of waiting for a timeout. The first request and any request that
  // names something new are answered; ACKs and NACKs of those answers are not.
  grpc::Status AnswerUnsupported(const std::string& type, PerType& t, const DiscoveryRequest& req,
                                 bool is_new, const Change& change) {
    if (!is_new && (req.has_error_detail() || change.added.empty()))
      return grpc::Status::OK;
    if (!t.warned) {
      spdlog::warn(
          "xds server: {} asked for {}, a type this server does not serve; answering "
          "with no resources",
          node_.id(), type);
      t.warned = true;
    }
    Emit(Event::Kind::kUnsupportedType, req);
    Write(type, t, {});
    return grpc::Status::OK;
  }

  void Emit(Event::Kind kind, const DiscoveryRequest& req) {
    if (!Observed())
      return;
    SessionBase::Emit(Event{kind,
                            {},
                            req.type_url(),
                            req.version_info(),
                            req.response_nonce(),
                            {req.resource_names().begin(), req.resource_names().end()},
                            req.has_error_detail() ? req.error_detail().message() : ""});
  }

  grpc::ServerReaderWriter<DiscoveryResponse, DiscoveryRequest>* stream_;
  std::map<std::string, PerType> types_;
};

// The protocol state of one Delta stream, used only on its handler thread.
//
// Rules from xds_protocol.rst "Incremental xDS" (section names below); where it leaves a
// choice, istiod's pilot/pkg/xds/delta.go (shouldRespondDelta).
class DeltaSession : public SessionBase {
 public:
  using Request = DeltaDiscoveryRequest;
  using Response = DeltaDiscoveryResponse;
  DeltaSession(AdsServer::SharedResourceFn& fn, AdsServer::EventFn& on_event,
               grpc::ServerReaderWriter<DeltaDiscoveryResponse, DeltaDiscoveryRequest>* stream)
      : SessionBase(fn, on_event, true), stream_(stream) {}

  grpc::Status OnRequest(const DeltaDiscoveryRequest& req, uint64_t version) {
    if (!has_node_) {
      if (!req.has_node() || req.node().id().empty()) {
        return {grpc::StatusCode::INVALID_ARGUMENT, "the first request must carry node.id"};
      }
      Connect(req.node(), version);
      Emit(Event::Kind::kConnect, req);
    }
    const std::string& type = req.type_url();
    Emit(Event::Kind::kRequest, req);
    PerType& t = types_[type];
    const bool has_sub_change =
        req.resource_names_subscribe_size() > 0 || req.resource_names_unsubscribe_size() > 0;
    if (!req.response_nonce().empty() && t.requested) {
      // "ACK and NACK semantics": the nonce names the response answered. One that is not
      // the last sent for the type answers a response since replaced: ignored, as istiod.
      if (req.response_nonce() != t.last_nonce) {
        Emit(Event::Kind::kStale, req);
        return grpc::Status::OK;
      }
      if (req.has_error_detail()) {
        // Recorded, not answered (istiod): a resend would carry what was just refused.
        spdlog::warn("xds server: {} NACKed delta {} nonce {}: {}", node_.id(), type,
                     req.response_nonce(), req.error_detail().message());
        Emit(Event::Kind::kNack, req);
        return grpc::Status::OK;
      }
      Emit(Event::Kind::kAck, req);
      if (!has_sub_change)
        return grpc::Status::OK;
    } else if (req.has_error_detail()) {
      Emit(Event::Kind::kNack, req);
      return grpc::Status::OK;
    }
    const bool first = !t.requested;
    t.requested = true;
    if (first) {
      // "Reconnect": what the client already holds, by name and version. Nothing it holds
      // at the current version is sent again.
      for (const auto& [name, v] : req.initial_resource_versions())
        t.held.emplace(name, v);
    }
    // "How the client specifies what resources to return": "*" is the wildcard; a first
    // CDS/LDS request naming nothing is the legacy wildcard. Named subscriptions add to
    // a wildcard; only unsubscribing "*" ends it.
    std::vector<std::string> added;
    bool wildcard_added = false;
    if (first && IsWildcardType(type) && req.resource_names_subscribe_size() == 0) {
      t.wildcard = true;
      wildcard_added = true;
    }
    for (const auto& n : req.resource_names_subscribe()) {
      if (n == "*") {
        wildcard_added = wildcard_added || !t.wildcard;
        t.wildcard = true;
      } else if (t.names.insert(n).second) {
        added.push_back(n);
      }
    }
    for (const auto& n : req.resource_names_unsubscribe()) {
      if (n == "*")
        t.wildcard = false;
      else
        t.names.erase(n);
    }
    // "Unsubscribing from resources": the client forgets what it no longer subscribes
    // to, so subscribing again sends it again.
    if (req.resource_names_unsubscribe_size() > 0) {
      std::erase_if(t.held, [&](const auto& kv) {
        return !t.names.contains(kv.first) && !(t.wildcard && served_.Has(type, kv.first));
      });
    }
    if (!IsSupportedType(type)) {
      if (first || !added.empty())
        AnswerUnsupported(type, t, req);
      return grpc::Status::OK;
    }
    std::vector<Item> out;
    std::vector<std::string> removed;
    if (first || wildcard_added) {
      // Everything covered that the client lacks; on a new stream also what it reported
      // holding that no longer exists.
      Reconcile(type, t, nullptr, out, removed);
    } else {
      for (const auto& n : added) {
        auto i = served_.Get(type, n, true);
        if (i && !Holds(t, *i))
          out.push_back(std::move(*i));
      }
    }
    // A first wildcard request is answered even when there is nothing: the answer is that
    // there is nothing (istiod answers it too). Named names that match nothing are not
    // ("Knowing When a Requested Resource Does Not Exist": the client's timer decides).
    if (!out.empty() || !removed.empty() || (first && t.wildcard))
      Write(type, t, out, removed);
    return grpc::Status::OK;
  }

  void OnPush(uint64_t version, const PushHint* hint) {
    if (!has_node_ || version <= version_)
      return;
    auto t0 = std::chrono::steady_clock::now();
    Recompute(version, hint);
    auto t1 = std::chrono::steady_clock::now();
    for (auto type : {kClusterType, kEndpointType, kSecretType, kListenerType, kRouteType}) {
      auto it = types_.find(std::string(type));
      if (it == types_.end())
        continue;
      std::vector<Item> out;
      std::vector<std::string> removed;
      Reconcile(it->first, it->second, hint, out, removed);
      if (!out.empty() || !removed.empty())
        Write(it->first, it->second, out, removed);
    }
    spdlog::debug("xds server: {} delta push {}{}: resources {:.2f} ms, diff and send {:.2f} ms",
                  node_.id(), version, hint ? " (hinted)" : "", Ms(t1 - t0),
                  Ms(std::chrono::steady_clock::now() - t1));
    Drop(served_.TakePrevious());
  }

 private:
  struct PerType {
    bool requested = false;
    bool wildcard = false;
    std::set<std::string> names;  // explicitly subscribed, "*" excluded
    // What the client holds: name -> version. From initial_resource_versions, then what
    // was sent; removals and unsubscriptions take names out.
    std::map<std::string, std::string> held;
    std::string last_nonce;
    bool warned = false;
  };
  using Item = ServedSet::Item;

  static bool Holds(const PerType& t, const Item& i) {
    auto h = t.held.find(i.name);
    return h != t.held.end() && h->second == VersionOf(i.hash);
  }

  // What the client lacks (`out`) and holds but should not (`removed`): over every name
  // the subscription covers and every name held, or (with a hint) over the hinted names
  // only. A name held and covered by nothing (deleted, or named in
  // initial_resource_versions and gone since) is removed.
  void Reconcile(const std::string& type, PerType& t, const PushHint* hint, std::vector<Item>& out,
                 std::vector<std::string>& removed) {
    auto consider = [&](const std::string& n) {
      const bool named = t.names.contains(n);
      std::optional<Item> i;
      if (named || t.wildcard)
        i = served_.Get(type, n, named);
      if (i) {
        if (!Holds(t, *i))
          out.push_back(std::move(*i));
      } else if (t.held.contains(n)) {
        removed.push_back(n);
      }
    };
    if (hint) {
      for (const auto& n : served_.Hinted(type, *hint, t.names))
        consider(n);
      return;
    }
    std::set<std::string> seen;
    if (t.wildcard) {
      served_.ForEach(type, [&](Item&& i) {
        seen.insert(i.name);
        if (!Holds(t, i))
          out.push_back(std::move(i));
      });
    }
    for (const auto& n : t.names) {
      if (!seen.contains(n)) {
        seen.insert(n);
        consider(n);
      }
    }
    for (const auto& [n, _] : t.held) {
      if (!seen.contains(n))
        removed.push_back(n);
    }
  }

  void Write(const std::string& type, PerType& t, std::vector<Item>& out,
             const std::vector<std::string>& removed) {
    DeltaDiscoveryResponse resp;
    resp.set_type_url(type);
    resp.set_system_version_info(std::to_string(version_));
    resp.set_nonce(std::to_string(++nonce_));
    for (auto& i : out) {
      auto* r = resp.add_resources();
      r->set_name(i.name);
      r->set_version(VersionOf(i.hash));
      r->mutable_resource()->set_type_url(type);
      r->mutable_resource()->set_value(i.Bytes());
      t.held[i.name] = r->version();
    }
    for (const auto& n : removed) {
      resp.add_removed_resources(n);
      t.held.erase(n);
    }
    t.last_nonce = resp.nonce();
    stream_->Write(resp);
    if (Observed()) {
      Event e{Event::Kind::kResponse, {}, type, resp.system_version_info(), resp.nonce(), {}, {}};
      for (const auto& i : out)
        e.resource_names.push_back(i.name);
      e.removed = removed;
      SessionBase::Emit(std::move(e));
    }
  }

  void AnswerUnsupported(const std::string& type, PerType& t, const DeltaDiscoveryRequest& req) {
    if (!t.warned) {
      spdlog::warn(
          "xds server: {} asked (delta) for {}, a type this server does not serve; answering "
          "with no resources",
          node_.id(), type);
      t.warned = true;
    }
    Emit(Event::Kind::kUnsupportedType, req);
    std::vector<Item> none;
    Write(type, t, none, {});
  }

  void Emit(Event::Kind kind, const DeltaDiscoveryRequest& req) {
    if (!Observed())
      return;
    Event e{kind,
            {},
            req.type_url(),
            {},
            req.response_nonce(),
            {req.resource_names_subscribe().begin(), req.resource_names_subscribe().end()},
            req.has_error_detail() ? req.error_detail().message() : ""};
    e.removed.assign(req.resource_names_unsubscribe().begin(),
                     req.resource_names_unsubscribe().end());
    SessionBase::Emit(std::move(e));
  }

  grpc::ServerReaderWriter<DeltaDiscoveryResponse, DeltaDiscoveryRequest>* stream_;
  std::map<std::string, PerType> types_;
};

// The token of "authorization: Bearer <token>", or "" when the stream carries none.
std::string BearerToken(const grpc::ServerContext& ctx) {
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end())
    return "";
  std::string_view v(it->second.data(), it->second.size());
  constexpr std::string_view kBearer = "Bearer ";
  return v.starts_with(kBearer) ? std::string(v.substr(kBearer.size())) : "";
}

std::string MetadataString(const envoy::config::core::v3::Node& node, const char* key) {
  const auto& f = node.metadata().fields();
  auto it = f.find(key);
  return it != f.end() && it->second.has_string_value() ? it->second.string_value() : "";
}

}  // namespace

Result<size_t> CheckConnectionIdentity(const envoy::config::core::v3::Node& node,
                                       const std::vector<std::string>& identities) {
  // The config namespace: metadata NAMESPACE, else the node id's "POD.NS" part
  // (istiod's GetProxyConfigNamespace).
  std::string ns = MetadataString(node, "NAMESPACE");
  if (ns.empty()) {
    if (auto parsed = ParseNodeId(node.id()))
      ns = parsed->pod_namespace;
  }
  const std::string sa = MetadataString(node, "SERVICE_ACCOUNT");
  for (size_t i = 0; i < identities.size(); ++i) {
    // spiffe://TRUST_DOMAIN/ns/NS/sa/SA (istiod's spiffe.ParseIdentity; others are skipped)
    std::string_view id = identities[i];
    constexpr std::string_view kScheme = "spiffe://";
    if (!id.starts_with(kScheme))
      continue;
    id.remove_prefix(kScheme.size());
    std::vector<std::string_view> parts;
    for (size_t start = 0;;) {
      size_t slash = id.find('/', start);
      parts.push_back(id.substr(start, slash == std::string_view::npos ? id.npos : slash - start));
      if (slash == std::string_view::npos)
        break;
      start = slash + 1;
    }
    if (parts.size() != 5 || parts[1] != "ns" || parts[3] != "sa")
      continue;
    if (!ns.empty() && parts[2] != ns)
      continue;
    if (!sa.empty() && parts[4] != sa)
      continue;
    return i;
  }
  return Fail(
      fmt::format("no identities ([{}]) matched {}/{}", fmt::join(identities, " "), ns, sa));
}

grpc::Status AdsServer::Service::StreamAggregatedResources(
    grpc::ServerContext* ctx,
    grpc::ServerReaderWriter<DiscoveryResponse, DiscoveryRequest>* stream) {
  return Serve<Session>(ctx, stream);
}

grpc::Status AdsServer::Service::DeltaAggregatedResources(
    grpc::ServerContext* ctx,
    grpc::ServerReaderWriter<DeltaDiscoveryResponse, DeltaDiscoveryRequest>* stream) {
  ++owner_.delta_streams_;
  return Serve<DeltaSession>(ctx, stream);
}

// One stream of either protocol: authentication, a reader thread feeding an inbox, and the
// handler loop that answers requests and pushes in order.
template <class SessionT, class Req, class Resp>
grpc::Status AdsServer::Service::Serve(grpc::ServerContext* ctx,
                                       grpc::ServerReaderWriter<Resp, Req>* stream) {
  if (!required_token.empty()) {
    auto md = ctx->client_metadata();
    auto it = md.find("authorization");
    if (it == md.end() ||
        std::string_view(it->second.data(), it->second.size()) != "Bearer " + required_token) {
      return {grpc::StatusCode::UNAUTHENTICATED, "missing or wrong bearer token"};
    }
  }
  struct Inbox : Stream {
    std::deque<Req> requests;
  };
  Inbox s;
  s.ctx = ctx;
  {
    std::lock_guard lock(owner_.mu_);
    if (owner_.stopping_)
      return {grpc::StatusCode::UNAVAILABLE, "server stopping"};
    owner_.streams_.push_back(&s);
  }
  auto unregister = [&] {
    std::lock_guard lock(owner_.mu_);
    owner_.streams_.remove(&s);
  };
  // The first request is read here, before the reader thread exists, so a stream
  // without a node ends with a status the client can read (cancelling a blocked reader
  // would replace it with CANCELLED).
  Req first;
  if (!stream->Read(&first)) {
    unregister();
    return grpc::Status::OK;
  }
  if (!first.has_node() || first.node().id().empty()) {
    unregister();
    return {grpc::StatusCode::INVALID_ARGUMENT, "the first request must carry node.id"};
  }
  if (authenticate) {
    // istiod authenticates when the stream opens and authorizes the node on its first
    // request (pilot/pkg/xds/ads.go initConnection); both end the stream before any
    // response.
    auto ids = authenticate(BearerToken(*ctx));
    if (!ids) {
      unregister();
      return {grpc::StatusCode::UNAUTHENTICATED, "authentication failure: " + ids.error().message};
    }
    if (auto ok = CheckConnectionIdentity(first.node(), *ids); !ok) {
      unregister();
      return {grpc::StatusCode::PERMISSION_DENIED, "authorization failed: " + ok.error().message};
    }
  }
  s.requests.push_back(std::move(first));
  // gRPC allows one reader and one writer at a time: reads happen on this thread,
  // writes on the handler thread below.
  std::thread reader([&s, stream] {
    Req req;
    while (stream->Read(&req)) {
      std::lock_guard lock(s.mu);
      s.requests.push_back(std::move(req));
      s.cv.notify_one();
    }
    std::lock_guard lock(s.mu);
    s.reader_done = true;
    s.cv.notify_one();
  });

  SessionT session(owner_.resources_, owner_.on_event_, stream);
  session.reclaimer = owner_.reclaimer_.get();
  grpc::Status result = grpc::Status::OK;
  while (result.ok()) {
    std::deque<Req> batch;
    uint64_t pushed;
    bool full;
    PushHint hint;
    {
      std::unique_lock lock(s.mu);
      s.cv.wait(lock,
                [&] { return s.stopping || !s.requests.empty() || s.reader_done || s.pushed > 0; });
      if (s.stopping || (s.reader_done && s.requests.empty()))
        break;
      batch.swap(s.requests);
      pushed = s.pushed;
      full = s.push_full;
      hint = std::move(s.hint);
      s.pushed = 0;
      s.push_full = false;
      s.hint = {};
    }
    for (const auto& req : batch) {
      result = session.OnRequest(req, owner_.version_.load());
      if (!result.ok())
        break;
    }
    if (pushed > 0 && result.ok())
      session.OnPush(pushed, full ? nullptr : &hint);
  }

  // After the client half-closed (WritesDone), every request it sent has been answered
  // above; the stream then ends with OK, not CANCELLED. Otherwise (Stop(), an error
  // status) the reader may still be blocked in Read(), and only a cancel unblocks it.
  bool half_closed;
  {
    std::lock_guard lock(s.mu);
    half_closed = s.reader_done && !s.stopping;
  }
  if (!half_closed || !result.ok())
    ctx->TryCancel();
  reader.join();
  unregister();
  if (owner_.on_event_ && session.has_node()) {
    Event e{Event::Kind::kDisconnect, session.node_id(), "", "", "", {}, ""};
    e.delta = std::is_same_v<SessionT, DeltaSession>;
    owner_.on_event_(e);
  }
  return result;
}

AdsServer::AdsServer(ResourceFn resources)
    : resources_([fn = std::move(resources)](const envoy::config::core::v3::Node& n) {
        return std::make_shared<const ResourceSet>(fn(n));
      }) {}

AdsServer::AdsServer(SharedResourceFn resources) : resources_(std::move(resources)) {}

AdsServer::~AdsServer() {
  Stop();
}

Result<int> AdsServer::Start(const AdsServerOptions& opts) {
  if (server_)
    return Fail("xds server: already started");
  std::shared_ptr<grpc::ServerCredentials> creds;
  if (!opts.cert_file.empty() || !opts.key_file.empty()) {
    auto cert = ReadFile(opts.cert_file, "xds server: cert_file");
    SLUICE_RETURN_IF_ERROR(cert);
    auto key = ReadFile(opts.key_file, "xds server: key_file");
    SLUICE_RETURN_IF_ERROR(key);
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    creds = grpc::SslServerCredentials(ssl);
  } else {
    creds = grpc::InsecureServerCredentials();
  }
  service_ = std::make_unique<Service>(*this);
  reclaimer_ = std::make_unique<Reclaimer>();
  service_->required_token = opts.required_token;
  service_->authenticate = opts.authenticate;
  {
    std::lock_guard lock(mu_);
    stopping_ = false;
  }
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(opts.address, creds, &port);
  builder.RegisterService(service_.get());
  builder.SetMaxReceiveMessageSize(-1);
  server_ = builder.BuildAndStart();
  if (!server_ || port == 0) {
    server_.reset();
    return Fail(fmt::format("xds server: cannot listen on {}", opts.address));
  }
  spdlog::info("xds server: serving ADS on {} (port {})", opts.address, port);
  return port;
}

uint64_t AdsServer::Push() {
  return QueuePush(nullptr);
}

uint64_t AdsServer::Push(const PushHint& hint) {
  return QueuePush(&hint);
}

uint64_t AdsServer::QueuePush(const PushHint* hint) {
  uint64_t v = ++version_;
  std::lock_guard lock(mu_);
  for (Stream* s : streams_) {
    std::lock_guard slock(s->mu);
    s->pushed = v;
    if (!hint) {
      s->push_full = true;
      s->hint = {};
    } else if (!s->push_full) {
      for (const auto& [type, names] : hint->changed)
        s->hint.changed[type].insert(names.begin(), names.end());
    }
    s->cv.notify_one();
  }
  return v;
}

void AdsServer::Stop() {
  if (!server_)
    return;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    for (Stream* s : streams_) {
      s->ctx->TryCancel();  // also ends a stream still waiting for its first request
      std::lock_guard slock(s->mu);
      s->stopping = true;
      s->cv.notify_one();
    }
  }
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server_->Wait();
  server_.reset();
  service_.reset();
}

size_t AdsServer::Connected() const {
  std::lock_guard lock(mu_);
  return streams_.size();
}

}  // namespace sluice::xds
