// Hands memory the allocator holds free back to the system, after a burst that freed a
// lot (a whole xDS set decoded and replaced). tcmalloc (what the agent links, see
// SLUICE_MALLOC in the top CMakeLists.txt) keeps freed spans for reuse; glibc's malloc
// keeps its heap top. Neither matters for speed, but both count as the agent's resident
// memory until returned. Linked without tcmalloc, glibc's malloc_trim is used.
#pragma once

#include <malloc.h>

extern "C" void MallocExtension_ReleaseFreeMemory(void) __attribute__((weak));

namespace sluice {

inline void ReleaseFreeMemory() {
  if (MallocExtension_ReleaseFreeMemory)
    MallocExtension_ReleaseFreeMemory();
  else
    malloc_trim(0);
}

}  // namespace sluice
