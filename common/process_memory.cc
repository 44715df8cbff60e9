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
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
#endif
}

}  // namespace gnc
