#include "sluice/config/snapshot.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

namespace sluice::config {
namespace {

template <class T>
ResourceMap<T> Share(const std::map<std::string, T>& in) {
  ResourceMap<T> out;
  for (const auto& [name, r] : in)
    out.emplace(name, std::make_shared<const T>(r));
  return out;
}

template <class T>
std::map<std::string, T> Unshare(const ResourceMap<T>& in) {
  std::map<std::string, T> out;
  for (const auto& [name, r] : in)
    out.emplace(name, *r);
  return out;
}

template <class T>
TypeDiff DiffMaps(const ResourceMap<T>& before, ResourceMap<T>& after, bool adopt) {
  TypeDiff d;
  auto b = before.begin();
  auto a = after.begin();
  while (b != before.end() || a != after.end()) {
    if (a == after.end() || (b != before.end() && b->first < a->first)) {
      d.removed.push_back(b->first);
      ++b;
    } else if (b == before.end() || a->first < b->first) {
      d.added.push_back(a->first);
      ++a;
    } else {
      // Same pointer: shared, unchanged. Otherwise compare content.
      if (a->second != b->second) {
        if (CanonicalBytes(*a->second) != CanonicalBytes(*b->second)) {
          d.changed.push_back(a->first);
        } else if (adopt) {
          a->second = b->second;
        }
      }
      ++a;
      ++b;
    }
  }
  return d;
}

}  // namespace

std::string CanonicalBytes(const google::protobuf::Message& m) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream sos(&out);
    google::protobuf::io::CodedOutputStream cos(&sos);
    cos.SetSerializationDeterministic(true);
    m.SerializeToCodedStream(&cos);
  }
  return out;
}

Snapshot Snapshot::FromResourceSet(const xds::ResourceSet& rs) {
  Snapshot s;
  s.clusters = Share(rs.clusters);
  s.endpoints = Share(rs.endpoints);
  s.listeners = Share(rs.listeners);
  s.routes = Share(rs.routes);
  return s;
}

xds::ResourceSet Snapshot::ToResourceSet() const {
  xds::ResourceSet rs;
  rs.clusters = Unshare(clusters);
  rs.endpoints = Unshare(endpoints);
  rs.listeners = Unshare(listeners);
  rs.routes = Unshare(routes);
  return rs;
}

Diff ComputeDiff(const Snapshot& before, const Snapshot& after) {
  Snapshot copy = after;  // pointers only
  return Diff{DiffMaps(before.clusters, copy.clusters, false),
              DiffMaps(before.endpoints, copy.endpoints, false),
              DiffMaps(before.listeners, copy.listeners, false),
              DiffMaps(before.routes, copy.routes, false)};
}

Diff AdoptUnchanged(const Snapshot& before, Snapshot& after) {
  return Diff{DiffMaps(before.clusters, after.clusters, true),
              DiffMaps(before.endpoints, after.endpoints, true),
              DiffMaps(before.listeners, after.listeners, true),
              DiffMaps(before.routes, after.routes, true)};
}

}  // namespace sluice::config
