// A growable byte buffer with a read offset: reads go straight into its tail, parsers
// look at Data() in place, Consume() advances. Memory is kept between uses, so a
// connection reused for many requests allocates only while it grows.
#pragma once

#include <cstdlib>
#include <cstring>
#include <new>
#include <string_view>
#include <utility>

namespace sluice::proxy {

class Buffer {
 public:
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { std::free(data_); }

  std::string_view Data() const { return {data_ + begin_, end_ - begin_}; }
  std::size_t size() const { return end_ - begin_; }
  bool empty() const { return end_ == begin_; }

  // Room for at least min bytes at the tail; compacts before it grows.
  char* WritePtr(std::size_t min, std::size_t* avail) {
    if (cap_ - end_ < min) {
      if (begin_ > 0) {
        std::memmove(data_, data_ + begin_, end_ - begin_);
        end_ -= begin_;
        begin_ = 0;
      }
      if (cap_ - end_ < min) {
        std::size_t ncap = cap_ ? cap_ * 2 : 16384;
        while (ncap - end_ < min)
          ncap *= 2;
        char* n = static_cast<char*>(std::realloc(data_, ncap));
        if (n == nullptr)
          throw std::bad_alloc();
        data_ = n;
        cap_ = ncap;
      }
    }
    *avail = cap_ - end_;
    return data_ + end_;
  }
  void Commit(std::size_t n) { end_ += n; }
  void Append(std::string_view s) {
    if (s.empty())
      return;  // memcpy from a null view is undefined, even for 0 bytes
    std::size_t avail;
    char* p = WritePtr(s.size(), &avail);
    std::memcpy(p, s.data(), s.size());
    end_ += s.size();
  }
  void Consume(std::size_t n) {
    begin_ += n;
    if (begin_ >= end_)
      begin_ = end_ = 0;
  }
  void Clear() { begin_ = end_ = 0; }
  // Keeps the first n bytes (n <= size()).
  void Truncate(std::size_t n) { end_ = begin_ + n; }
  // Exchanges contents and memory with another buffer (hands bytes over without a copy).
  void Swap(Buffer& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(cap_, o.cap_);
    std::swap(begin_, o.begin_);
    std::swap(end_, o.end_);
  }
  // Gives memory back when a buffer grew large for one big message.
  void Shrink(std::size_t keep) {
    if (empty() && cap_ > keep) {
      std::free(data_);
      data_ = nullptr;
      cap_ = begin_ = end_ = 0;
    }
  }

 private:
  char* data_ = nullptr;
  std::size_t cap_ = 0, begin_ = 0, end_ = 0;
};

}  // namespace sluice::proxy
