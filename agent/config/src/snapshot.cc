#include "sluice/config/snapshot.h"

#include <fmt/format.h>
#include <google/protobuf/io/coded_stream.h>

#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <algorithm>

namespace sluice::config {
namespace {

template <class T>
Resources<T> Share(const std::map<std::string, T>& in) {
  ResourceMap<T> out;
  for (const auto& [name, r] : in)
    out.emplace_hint(out.end(), name, std::make_shared<const T>(r));
  return Resources<T>(std::move(out));
}

template <class T>
std::map<std::string, T> Unshare(const Resources<T>& in) {
  std::map<std::string, T> out;
  for (const auto& [name, r] : in)
    out.emplace_hint(out.end(), name, *r);
  return out;
}

template <class T>
TypeDiff DiffMaps(const Resources<T>& before, Resources<T>& after, bool adopt) {
  TypeDiff d;
  std::vector<std::pair<std::string, std::shared_ptr<const T>>> adopted;
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
          adopted.emplace_back(a->first, b->second);
        }
      }
      ++a;
      ++b;
    }
  }
  // After the walk: replacing an entry may copy its chunk under the iterators.
  for (auto& [name, r] : adopted)
    after.insert_or_assign(name, std::move(r));
  return d;
}

// One type of an edit: puts then removals, into `m` (a copy of the snapshot's map).
template <class T>
Result<TypeDiff> EditMap(std::string_view kind, Resources<T>& m, ResourceMap<T>&& puts,
                         const std::vector<std::string>& removes) {
  TypeDiff d;
  for (const auto& name : removes) {
    if (puts.contains(name))
      return Fail(fmt::format("{} \"{}\": both updated and removed in one change", kind, name));
    if (m.erase(name))
      d.removed.push_back(name);
  }
  for (auto& [name, r] : puts) {
    if (!r)
      return Fail(fmt::format("{} \"{}\": missing resource", kind, name));
    auto it = m.find(name);
    if (it == m.end()) {
      d.added.push_back(name);
      m.insert_or_assign(name, std::move(r));
    } else if (it->second != r && CanonicalBytes(*it->second) != CanonicalBytes(*r)) {
      d.changed.push_back(name);
      m.insert_or_assign(name, std::move(r));
    }
  }
  std::ranges::sort(d.added);
  std::ranges::sort(d.changed);
  std::ranges::sort(d.removed);
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
  s.secrets = Share(rs.secrets);
  return s;
}

xds::ResourceSet Snapshot::ToResourceSet() const {
  xds::ResourceSet rs;
  rs.clusters = Unshare(clusters);
  rs.endpoints = Unshare(endpoints);
  rs.listeners = Unshare(listeners);
  rs.routes = Unshare(routes);
  rs.secrets = Unshare(secrets);
  return rs;
}

Diff ComputeDiff(const Snapshot& before, const Snapshot& after) {
  Snapshot copy = after;  // pointers only
  Diff d{DiffMaps(before.clusters, copy.clusters, false),
         DiffMaps(before.endpoints, copy.endpoints, false),
         DiffMaps(before.listeners, copy.listeners, false),
         DiffMaps(before.routes, copy.routes, false)};
  d.secrets = DiffMaps(before.secrets, copy.secrets, false);
  return d;
}

Result<std::pair<Snapshot, Diff>> ApplyEdit(const Snapshot& before, SnapshotEdit edit) {
  std::pair<Snapshot, Diff> out;
  Snapshot& after = out.first;
  Diff& diff = out.second;
  // The maps share their chunks with `before`'s; the edit copies the chunks it writes.
  after = before;
  auto type = [](auto& m, auto&& puts, const auto& removes, std::string_view kind,
                 TypeDiff& d) -> Result<void> {
    if (puts.empty() && removes.empty())
      return {};
    auto r = EditMap(kind, m, std::move(puts), removes);
    SLUICE_RETURN_IF_ERROR(r);
    d = std::move(*r);
    return {};
  };
  SLUICE_RETURN_IF_ERROR(type(after.clusters, std::move(edit.clusters), edit.removed_clusters,
                              "cluster", diff.clusters));
  SLUICE_RETURN_IF_ERROR(type(after.endpoints, std::move(edit.endpoints), edit.removed_endpoints,
                              "endpoints", diff.endpoints));
  SLUICE_RETURN_IF_ERROR(type(after.listeners, std::move(edit.listeners), edit.removed_listeners,
                              "listener", diff.listeners));
  SLUICE_RETURN_IF_ERROR(
      type(after.routes, std::move(edit.routes), edit.removed_routes, "route", diff.routes));
  SLUICE_RETURN_IF_ERROR(
      type(after.secrets, std::move(edit.secrets), edit.removed_secrets, "secret", diff.secrets));
  for (auto& [t, v] : edit.versions)
    after.versions[t] = std::move(v);
  return out;
}

Diff AdoptUnchanged(const Snapshot& before, Snapshot& after) {
  Diff d{DiffMaps(before.clusters, after.clusters, true),
         DiffMaps(before.endpoints, after.endpoints, true),
         DiffMaps(before.listeners, after.listeners, true),
         DiffMaps(before.routes, after.routes, true)};
  d.secrets = DiffMaps(before.secrets, after.secrets, true);
  return d;
}

}  // namespace sluice::config
