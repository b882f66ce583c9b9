#include "l7_wire.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "envoy/service/discovery/v3/discovery.pb.h"

namespace sluice::agent::l7wire {
namespace {

struct Header {
  uint32_t type;
  uint32_t meta_len;
  uint32_t blob_len;
};

// A frame's parts are written from one buffer, so a reader never sees one half-sent.
constexpr std::size_t kMaxFds = 4;
constexpr uint32_t kMaxMeta = 64u << 20;
constexpr uint32_t kMaxBlob = 1024u << 20;

Result<void> WriteAll(int sock, const char* p, std::size_t n) {
  while (n > 0) {
    ssize_t w = send(sock, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return FailErrno("L7 wire: send", errno);
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return {};
}

// Reads exactly n bytes; false at a clean end of stream before the first byte.
Result<bool> ReadAll(int sock, char* p, std::size_t n, bool first) {
  std::size_t got = 0;
  while (got < n) {
    ssize_t r = recv(sock, p + got, n - got, 0);
    if (r == 0) {
      if (first && got == 0)
        return false;
      return Fail("L7 wire: the stream ended inside a frame");
    }
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return FailErrno("L7 wire: recv", errno);
    }
    got += static_cast<std::size_t>(r);
  }
  return true;
}

}  // namespace

Result<void> Send(int sock, const Message& m) {
  const std::string meta = m.meta.dump();
  if (m.fds.size() > kMaxFds)
    return Fail("L7 wire: too many descriptors in one frame");
  Header h{static_cast<uint32_t>(m.type), static_cast<uint32_t>(meta.size()),
           static_cast<uint32_t>(m.blob.size())};
  std::string frame(reinterpret_cast<const char*>(&h), sizeof(h));
  frame += meta;
  frame += m.blob;
  // The descriptors ride on the frame's first bytes (the header's), which the reader
  // takes with recvmsg; the kernel does not merge a read across them.
  std::size_t off = 0;
  if (!m.fds.empty()) {
    iovec iov{frame.data(), frame.size()};
    alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * m.fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * m.fds.size());
    for (std::size_t i = 0; i < m.fds.size(); ++i) {
      int fd = m.fds[i].get();
      std::memcpy(CMSG_DATA(c) + i * sizeof(int), &fd, sizeof(int));
    }
    ssize_t w;
    do {
      w = sendmsg(sock, &msg, MSG_NOSIGNAL);
    } while (w < 0 && errno == EINTR);
    if (w < 0)
      return FailErrno("L7 wire: sendmsg", errno);
    off = static_cast<std::size_t>(w);
  }
  return WriteAll(sock, frame.data() + off, frame.size() - off);
}

Result<std::optional<Message>> Receive(int sock) {
  Header h{};
  Message m;
  // The header, with any descriptors that came with it.
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
  iovec iov{&h, sizeof(h)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl;
  msg.msg_controllen = sizeof(ctl);
  ssize_t r;
  do {
    r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (r < 0 && errno == EINTR);
  if (r < 0)
    return FailErrno("L7 wire: recvmsg", errno);
  if (r == 0)
    return std::optional<Message>();
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
      continue;
    const std::size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < n; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      m.fds.emplace_back(fd);
    }
  }
  if (static_cast<std::size_t>(r) < sizeof(h)) {
    auto rest = ReadAll(sock, reinterpret_cast<char*>(&h) + r, sizeof(h) - r, false);
    SLUICE_RETURN_IF_ERROR(rest);
  }
  if (h.meta_len > kMaxMeta || h.blob_len > kMaxBlob)
    return Fail("L7 wire: a frame larger than the limits (corrupt stream?)");
  m.type = static_cast<Type>(h.type);
  std::string meta(h.meta_len, '\0');
  SLUICE_RETURN_IF_ERROR(ReadAll(sock, meta.data(), meta.size(), false));
  m.blob.resize(h.blob_len);
  SLUICE_RETURN_IF_ERROR(ReadAll(sock, m.blob.data(), m.blob.size(), false));
  m.meta = nlohmann::json::parse(meta, nullptr, /*allow_exceptions=*/false);
  if (m.meta.is_discarded())
    return Fail("L7 wire: a frame's metadata is not JSON");
  return std::optional<Message>(std::move(m));
}

std::string EncodeResources(const xds::ResourceSet& rs) {
  envoy::service::discovery::v3::DiscoveryResponse d;
  for (const auto& [n, r] : rs.clusters)
    d.add_resources()->PackFrom(r);
  for (const auto& [n, r] : rs.endpoints)
    d.add_resources()->PackFrom(r);
  for (const auto& [n, r] : rs.listeners)
    d.add_resources()->PackFrom(r);
  for (const auto& [n, r] : rs.routes)
    d.add_resources()->PackFrom(r);
  for (const auto& [n, r] : rs.secrets)
    d.add_resources()->PackFrom(r);
  return d.SerializeAsString();
}

Result<xds::ResourceSet> DecodeResources(const std::string& blob) {
  envoy::service::discovery::v3::DiscoveryResponse d;
  if (!d.ParseFromString(blob))
    return Fail("L7 wire: resources do not parse");
  xds::ResourceSet rs;
  for (const auto& any : d.resources()) {
    bool ok = false;
    if (any.type_url() == xds::kClusterType) {
      envoy::config::cluster::v3::Cluster c;
      ok = any.UnpackTo(&c);
      rs.Add(std::move(c));
    } else if (any.type_url() == xds::kEndpointType) {
      envoy::config::endpoint::v3::ClusterLoadAssignment e;
      ok = any.UnpackTo(&e);
      rs.Add(std::move(e));
    } else if (any.type_url() == xds::kListenerType) {
      envoy::config::listener::v3::Listener l;
      ok = any.UnpackTo(&l);
      rs.Add(std::move(l));
    } else if (any.type_url() == xds::kRouteType) {
      envoy::config::route::v3::RouteConfiguration r;
      ok = any.UnpackTo(&r);
      rs.Add(std::move(r));
    } else if (any.type_url() == xds::kSecretType) {
      envoy::extensions::transport_sockets::tls::v3::Secret sec;
      ok = any.UnpackTo(&sec);
      rs.Add(std::move(sec));
    }
    if (!ok)
      return Fail("L7 wire: resource of type " + any.type_url() + " does not unpack");
  }
  return rs;
}

namespace {

// Puts (into d) the resources of `after` that are not `before`'s object, and returns the
// names only `before` has. Both maps are sorted by name: one walk over the two.
template <class T>
nlohmann::json DeltaOf(const config::Resources<T>& before, const config::Resources<T>& after,
                       envoy::service::discovery::v3::DiscoveryResponse* d) {
  nlohmann::json removed = nlohmann::json::array();
  auto b = before.begin();
  for (const auto& [name, r] : after) {
    if (b != before.end() && b->second == r) {
      ++b;  // the same object (the common case): no name to compare
      continue;
    }
    while (b != before.end() && b->first < name) {
      removed.push_back(b->first);
      ++b;
    }
    const bool same = b != before.end() && b->first == name && b->second == r;
    if (b != before.end() && b->first == name)
      ++b;
    if (!same)
      d->add_resources()->PackFrom(*r);
  }
  for (; b != before.end(); ++b)
    removed.push_back(b->first);
  return removed;
}

template <class T>
Result<void> Put(const google::protobuf::Any& any, config::ResourceMap<T>* out,
                 const std::string& (T::*name)() const) {
  auto r = std::make_shared<T>();
  if (!any.UnpackTo(r.get()))
    return Fail("L7 wire: a delta's resource of type " + any.type_url() + " does not unpack");
  std::string key = ((*r).*name)();
  (*out)[std::move(key)] = std::move(r);
  return {};
}

}  // namespace

std::string EncodeDelta(const config::Snapshot& before, const config::Snapshot& after,
                        nlohmann::json* meta) {
  envoy::service::discovery::v3::DiscoveryResponse d;
  nlohmann::json removed = {{"clusters", DeltaOf(before.clusters, after.clusters, &d)},
                            {"endpoints", DeltaOf(before.endpoints, after.endpoints, &d)},
                            {"listeners", DeltaOf(before.listeners, after.listeners, &d)},
                            {"routes", DeltaOf(before.routes, after.routes, &d)},
                            {"secrets", DeltaOf(before.secrets, after.secrets, &d)}};
  (*meta)["base"] = before.generation;
  (*meta)["removed"] = std::move(removed);
  (*meta)["versions"] = after.versions;
  return d.SerializeAsString();
}

namespace {

template <class T>
nlohmann::json DeltaOf(const config::Resources<T>& after, const config::TypeDiff& diff,
                       envoy::service::discovery::v3::DiscoveryResponse* d) {
  for (const auto* names : {&diff.added, &diff.changed}) {
    for (const auto& name : *names) {
      if (auto it = after.find(name); it != after.end())
        d->add_resources()->PackFrom(*it->second);
    }
  }
  return diff.removed;
}

}  // namespace

std::string EncodeDelta(uint64_t base, const config::Snapshot& after, const config::Diff& diff,
                        nlohmann::json* meta) {
  envoy::service::discovery::v3::DiscoveryResponse d;
  nlohmann::json removed = {{"clusters", DeltaOf(after.clusters, diff.clusters, &d)},
                            {"endpoints", DeltaOf(after.endpoints, diff.endpoints, &d)},
                            {"listeners", DeltaOf(after.listeners, diff.listeners, &d)},
                            {"routes", DeltaOf(after.routes, diff.routes, &d)},
                            {"secrets", DeltaOf(after.secrets, diff.secrets, &d)}};
  (*meta)["base"] = base;
  (*meta)["removed"] = std::move(removed);
  (*meta)["versions"] = after.versions;
  return d.SerializeAsString();
}

Result<config::SnapshotEdit> DecodeDelta(const nlohmann::json& meta, const std::string& blob) {
  envoy::service::discovery::v3::DiscoveryResponse d;
  if (!d.ParseFromString(blob))
    return Fail("L7 wire: a delta's resources do not parse");
  config::SnapshotEdit e;
  for (const auto& any : d.resources()) {
    Result<void> r;
    if (any.type_url() == xds::kClusterType)
      r = Put(any, &e.clusters, &envoy::config::cluster::v3::Cluster::name);
    else if (any.type_url() == xds::kEndpointType)
      r = Put(any, &e.endpoints, &envoy::config::endpoint::v3::ClusterLoadAssignment::cluster_name);
    else if (any.type_url() == xds::kListenerType)
      r = Put(any, &e.listeners, &envoy::config::listener::v3::Listener::name);
    else if (any.type_url() == xds::kRouteType)
      r = Put(any, &e.routes, &envoy::config::route::v3::RouteConfiguration::name);
    else if (any.type_url() == xds::kSecretType)
      r = Put(any, &e.secrets, &envoy::extensions::transport_sockets::tls::v3::Secret::name);
    else
      r = Fail("L7 wire: a delta carries a resource of type " + any.type_url());
    SLUICE_RETURN_IF_ERROR(r);
  }
  const nlohmann::json removed = meta.value("removed", nlohmann::json::object());
  e.removed_clusters = removed.value("clusters", std::vector<std::string>{});
  e.removed_endpoints = removed.value("endpoints", std::vector<std::string>{});
  e.removed_listeners = removed.value("listeners", std::vector<std::string>{});
  e.removed_routes = removed.value("routes", std::vector<std::string>{});
  e.removed_secrets = removed.value("secrets", std::vector<std::string>{});
  e.versions = meta.value("versions", std::map<std::string, std::string>{});
  return e;
}

}  // namespace sluice::agent::l7wire
