// Hands memory the allocator holds free back to the system, after a burst that freed a
// lot (a whole xDS set decoded and replaced). tcmalloc (what the agent links, see
// SLUICE_MALLOC in the top CMakeLists.txt) keeps freed spans for reuse; glibc's malloc
// keeps its heap top. Neither matters for speed, but both count as the agent's resident
// memory until returned. Linked without tcmalloc, glibc's malloc_trim is used.
#pragma once

#include <malloc.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>

extern "C" void MallocExtension_ReleaseFreeMemory(void) __attribute__((weak));
extern "C" int MallocExtension_GetNumericProperty(const char* property, size_t* value)
    __attribute__((weak));
extern "C" int MallocExtension_SetNumericProperty(const char* property, size_t value)
    __attribute__((weak));

namespace sluice {

inline void ReleaseFreeMemory() {
  if (MallocExtension_ReleaseFreeMemory)
    MallocExtension_ReleaseFreeMemory();
  else
    malloc_trim(0);
}

// The agent's allocator settings, set once at start. tcmalloc: spans freed are returned
// to the system at once (aggressive decommit); without it a small node agent kept ~11 MiB
// more resident than on glibc (docs/benchmarks.md).
inline void ConfigureAllocator() {
  if (MallocExtension_SetNumericProperty)
    MallocExtension_SetNumericProperty("tcmalloc.aggressive_memory_decommit", 1);
}

// Bytes the allocator holds free (tcmalloc's page heap, glibc's free chunks).
inline std::size_t FreeHeldBytes() {
  if (MallocExtension_GetNumericProperty) {
    size_t v = 0;
    MallocExtension_GetNumericProperty("tcmalloc.pageheap_free_bytes", &v);
    return v;
  }
  return mallinfo2().fordblks;
}

// Every `period`, returns what the allocator holds free to the system when it is more
// than `threshold`: frees that come after a burst (a replaced snapshot released by its
// last reader, a revision freed by the data plane's reclaimer) are handed back too, so
// the process's resident memory settles at what it uses. A property read per period
// otherwise.
class MemoryReleaser {
 public:
  explicit MemoryReleaser(std::chrono::milliseconds period = std::chrono::seconds(2),
                          std::size_t threshold = std::size_t{4} << 20)
      : thread_([this, period, threshold] {
          std::unique_lock lock(mu_);
          while (!cv_.wait_for(lock, period, [&] { return stop_; })) {
            if (FreeHeldBytes() > threshold)
              ReleaseFreeMemory();
          }
        }) {}
  ~MemoryReleaser() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  MemoryReleaser(const MemoryReleaser&) = delete;
  MemoryReleaser& operator=(const MemoryReleaser&) = delete;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;  // last: starts once the rest is built
};

}  // namespace sluice
