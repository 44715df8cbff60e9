#include "common/process_memory.h"

// Any C library header defines __GLIBC__ under glibc (through <features.h>); without
// one the check below would always be false and the function would do nothing.
#include <cstdlib>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace gnc {

void RetainFreedMemory() {
#if defined(__GLIBC__)
  // Setting either turns off glibc's own adjustment of both thresholds.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  // Every arena keeps its own free memory: with one per thread (up to 8 per core) a
  // shard of K = 32 workers kept about 230 MB free across five arenas; two share it.
  mallopt(M_ARENA_MAX, 2);
#endif
}

}  // namespace gnc
