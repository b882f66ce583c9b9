// Typed access to one BPF map by fd. Every error names the map and the operation.
#pragma once

#include <bpf/bpf.h>

#include <cerrno>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "sluice/common/result.h"

namespace sluice {

template <class K, class V>
class TypedMap {
 public:
  TypedMap() = default;
  TypedMap(std::string name, int fd) : name_(std::move(name)), fd_(fd) {}

  [[nodiscard]] const std::string& name() const { return name_; }
  [[nodiscard]] int fd() const { return fd_; }

  // std::nullopt-like: false when the key is absent.
  [[nodiscard]] Result<bool> Lookup(const K& key, V* value, uint64_t flags = 0) const {
    if (bpf_map_lookup_elem_flags(fd_, &key, value, flags) == 0)
      return true;
    if (errno == ENOENT)
      return false;
    return FailErrno("map " + name_ + ": lookup", errno);
  }

  [[nodiscard]] Result<void> Update(const K& key, const V& value, uint64_t flags) {
    if (bpf_map_update_elem(fd_, &key, &value, flags) == 0)
      return {};
    if (errno == E2BIG && flags != BPF_EXIST)
      return Fail("map " + name_ + ": full (raise its size with the loader's --max-* options)",
                  E2BIG);
    return FailErrno("map " + name_ + ": update", errno);
  }

  // Writes keys[i] -> values[i] for every i in one bpf() call (BPF_MAP_UPDATE_BATCH;
  // flags: 0 or BPF_F_LOCK), or one by one when the kernel refuses the batch. On an
  // error, *failed is the index of an element that could not be written; the others may
  // or may not be.
  [[nodiscard]] Result<void> UpdateBatch(const std::vector<K>& keys, const std::vector<V>& values,
                                         uint64_t flags, std::size_t* failed = nullptr) {
    if (keys.empty())
      return {};
    LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = flags);
    auto count = static_cast<__u32>(keys.size());
    if (bpf_map_update_batch(fd_, keys.data(), values.data(), &count, &opts) == 0 &&
        count == keys.size())
      return {};
    // Rewriting an element is harmless: from the start, whatever the batch reported.
    for (std::size_t i = 0; i < keys.size(); i++) {
      if (auto r = Update(keys[i], values[i], flags); !r) {
        if (failed)
          *failed = i;
        return r;
      }
    }
    return {};
  }

  // False when the key was already absent.
  [[nodiscard]] Result<bool> Delete(const K& key) {
    if (bpf_map_delete_elem(fd_, &key) == 0)
      return true;
    if (errno == ENOENT)
      return false;
    return FailErrno("map " + name_ + ": delete", errno);
  }

  [[nodiscard]] Result<std::vector<K>> Keys() const {
    std::vector<K> keys;
    K cur{}, next{};
    const K* prev = nullptr;
    while (bpf_map_get_next_key(fd_, prev, &next) == 0) {
      keys.push_back(next);
      cur = next;
      prev = &cur;
    }
    if (errno != ENOENT)
      return FailErrno("map " + name_ + ": iterate", errno);
    return keys;
  }

 private:
  std::string name_;
  int fd_ = -1;
};

}  // namespace sluice
