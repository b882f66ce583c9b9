// Resources<T>: the resources of one type in a Snapshot, by name, in name order.
//
// A snapshot is copied for every change (the store publishes a new one), so copying must
// cost what the change costs, not what the configuration holds. The names are kept in
// chunks of up to kChunk entries, each chunk shared between copies until one of them
// writes to it (copy on write): copying the whole map copies one pointer per chunk
// (10,000 resources: 79 pointers), and putting or removing one resource then copies one
// chunk. Reads are a std::map's (find, at, contains, ordered iteration) at O(log n).
//
// Not thread-safe for writes, as std::map; copies may be read and written by different
// threads (a shared chunk is never written: a writer copies it first).
#pragma once

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace sluice::config {

template <class T>
class Resources {
 public:
  using key_type = std::string;
  using mapped_type = std::shared_ptr<const T>;
  using value_type = std::pair<const std::string, mapped_type>;
  using Map = std::map<std::string, mapped_type>;
  static constexpr size_t kChunk = 128;

  class const_iterator {
   public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = Resources::value_type;
    using difference_type = std::ptrdiff_t;
    using pointer = const value_type*;
    using reference = const value_type&;

    const_iterator() = default;
    reference operator*() const { return *it_; }
    pointer operator->() const { return &*it_; }
    const_iterator& operator++() {
      if (++it_ == (*chunks_)[chunk_]->end()) {
        ++chunk_;
        it_ = chunk_ < chunks_->size() ? (*chunks_)[chunk_]->cbegin()
                                       : typename Map::const_iterator();
      }
      return *this;
    }
    const_iterator operator++(int) {
      auto old = *this;
      ++*this;
      return old;
    }
    bool operator==(const const_iterator& o) const {
      return chunk_ == o.chunk_ && (chunk_ == chunks_size() || it_ == o.it_);
    }

   private:
    friend class Resources;
    using Chunks = std::vector<std::shared_ptr<Map>>;
    const_iterator(const Chunks* chunks, size_t chunk, typename Map::const_iterator it)
        : chunks_(chunks), chunk_(chunk), it_(it) {}
    size_t chunks_size() const { return chunks_ ? chunks_->size() : 0; }
    const Chunks* chunks_ = nullptr;
    size_t chunk_ = 0;
    typename Map::const_iterator it_{};
  };
  using iterator = const_iterator;  // entries are replaced through the map, not in place

  Resources() = default;
  Resources(const Map& m) { *this = Resources(Map(m)); }  // NOLINT: a std::map converts
  Resources(Map&& m) {                                    // NOLINT
    for (auto& [k, v] : m)
      emplace_hint_end(k, std::move(v));
  }

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  const_iterator begin() const {
    return chunks_.empty() ? end() : const_iterator(&chunks_, 0, chunks_[0]->cbegin());
  }
  const_iterator end() const { return const_iterator(&chunks_, chunks_.size(), {}); }

  const_iterator find(const std::string& k) const {
    size_t c = ChunkOf(k);
    if (c == chunks_.size())
      return end();
    auto it = chunks_[c]->find(k);
    return it == chunks_[c]->end() ? end() : const_iterator(&chunks_, c, it);
  }
  bool contains(const std::string& k) const { return find(k) != end(); }
  size_t count(const std::string& k) const { return contains(k) ? 1 : 0; }
  const mapped_type& at(const std::string& k) const {
    auto it = find(k);
    if (it == end())
      throw std::out_of_range("Resources::at: no resource \"" + k + "\"");
    return it->second;
  }

  // Adds k if absent (as std::map::emplace); true when added.
  std::pair<const_iterator, bool> emplace(const std::string& k, mapped_type v) {
    if (auto it = find(k); it != end())
      return {it, false};
    insert_or_assign(k, std::move(v));
    return {find(k), true};
  }
  // Sets k (added or replaced); true when added.
  bool insert_or_assign(const std::string& k, mapped_type v) {
    if (chunks_.empty()) {
      chunks_.push_back(std::make_shared<Map>());
      chunks_[0]->emplace(k, std::move(v));
      size_ = 1;
      return true;
    }
    size_t c = ChunkOf(k);
    if (c == chunks_.size())
      c = 0;  // before the first key: the first chunk
    Map& m = Writable(c);
    auto [it, added] = m.insert_or_assign(k, std::move(v));
    if (added) {
      ++size_;
      if (m.size() > 2 * kChunk)
        Split(c);
    }
    return added;
  }
  // A reference to k's entry, added empty if absent (as std::map::operator[]).
  mapped_type& operator[](const std::string& k) {
    if (!contains(k))
      insert_or_assign(k, nullptr);
    size_t c = ChunkOf(k);
    return Writable(c).at(k);
  }
  size_t erase(const std::string& k) {
    size_t c = ChunkOf(k);
    if (c == chunks_.size() || !chunks_[c]->contains(k))
      return 0;
    Map& m = Writable(c);
    m.erase(k);
    --size_;
    if (m.empty())
      chunks_.erase(chunks_.begin() + static_cast<std::ptrdiff_t>(c));
    return 1;
  }
  void clear() {
    chunks_.clear();
    size_ = 0;
  }
  template <class Pred>
  size_t EraseIf(Pred pred) {
    std::vector<std::string> gone;
    for (const auto& kv : *this)
      if (pred(kv))
        gone.push_back(kv.first);
    for (const auto& k : gone)
      erase(k);
    return gone.size();
  }

  Map ToMap() const { return Map(begin(), end()); }
  bool operator==(const Resources& o) const {
    return size_ == o.size_ && std::equal(begin(), end(), o.begin());
  }
  // How many chunks this map shares with `o` (for tests of the sharing).
  size_t SharedChunks(const Resources& o) const {
    size_t n = 0;
    for (const auto& c : chunks_)
      n += std::any_of(o.chunks_.begin(), o.chunks_.end(), [&](const auto& x) { return x == c; });
    return n;
  }
  size_t Chunks() const { return chunks_.size(); }

 private:
  // The chunk that holds k, or would: the last whose first key is <= k; chunks_.size()
  // when k is before every key (or the map is empty).
  size_t ChunkOf(const std::string& k) const {
    auto it = std::upper_bound(chunks_.begin(), chunks_.end(), k,
                               [](const std::string& key, const std::shared_ptr<Map>& c) {
                                 return key < c->begin()->first;
                               });
    if (it == chunks_.begin())
      return chunks_.size();
    return static_cast<size_t>(it - chunks_.begin()) - 1;
  }
  Map& Writable(size_t c) {
    if (chunks_[c].use_count() > 1)
      chunks_[c] = std::make_shared<Map>(*chunks_[c]);
    return *chunks_[c];
  }
  void Split(size_t c) {
    Map& m = *chunks_[c];
    auto upper = std::make_shared<Map>();
    auto mid = std::next(m.begin(), static_cast<std::ptrdiff_t>(m.size() / 2));
    while (mid != m.end()) {
      auto next = std::next(mid);
      upper->insert(m.extract(mid));
      mid = next;
    }
    chunks_.insert(chunks_.begin() + static_cast<std::ptrdiff_t>(c) + 1, std::move(upper));
  }
  // Builds from sorted input: fills the last chunk up to kChunk.
  void emplace_hint_end(const std::string& k, mapped_type v) {
    if (chunks_.empty() || chunks_.back()->size() >= kChunk)
      chunks_.push_back(std::make_shared<Map>());
    chunks_.back()->emplace_hint(chunks_.back()->end(), k, std::move(v));
    ++size_;
  }

  std::vector<std::shared_ptr<Map>> chunks_;
  size_t size_ = 0;
};

}  // namespace sluice::config
