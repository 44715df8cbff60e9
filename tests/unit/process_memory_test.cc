// RetainFreedMemory: after it, a buffer of the size of a round's receive buffers comes
// from the heap (not a fresh mapping) and stays in the process once freed, so the next
// round reuses its pages instead of faulting in and zeroing new ones.
#include "common/process_memory.h"

#include <cstdlib>
#include <cstring>

#include "gtest/gtest.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace gnc {
namespace {

// Sanitizers bring their own allocator: glibc's settings and statistics do not apply.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define GNC_OWN_ALLOCATOR 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define GNC_OWN_ALLOCATOR 1
#endif
#endif

#if defined(__GLIBC__) && !defined(GNC_OWN_ALLOCATOR)
TEST(ProcessMemoryTest, LargeBuffersComeFromTheHeapAndStayAfterFree) {
  constexpr size_t kBytes = 20 << 20;  // above glibc's default mmap threshold (128 KiB)
  RetainFreedMemory();
  const struct mallinfo2 before = mallinfo2();
  void* p = std::malloc(kBytes);
  ASSERT_NE(p, nullptr);
  std::memset(p, 1, kBytes);
  const struct mallinfo2 during = mallinfo2();
  EXPECT_EQ(during.hblkhd, before.hblkhd) << "the buffer was given its own mapping";
  std::free(p);
  const struct mallinfo2 after = mallinfo2();
  EXPECT_GE(after.fordblks, kBytes) << "the freed buffer went back to the kernel";
}
#else
TEST(ProcessMemoryTest, LargeBuffersComeFromTheHeapAndStayAfterFree) {
  GTEST_SKIP() << "RetainFreedMemory tunes glibc's allocator, which this build does not use "
                  "(another C library, or a sanitizer's allocator)";
}
#endif

}  // namespace
}  // namespace gnc
