// A floor under requested thread stack sizes, linked into both daemons.
//
// civetweb (the HTTP server inside prometheus-cpp) starts its threads with a fixed
// stack of about 100 KiB. glibc places a thread's static TLS inside its stack, and the
// CUDA libraries (cuBLASLt alone brings about 94 KiB of TLS) leave too little of it:
// civetweb's threads then fail to start and /metrics is lost. Executables see their own
// definition of pthread_attr_setstacksize first (symbol interposition; the daemons
// export it), so every stack request below kMinStackBytes is raised to it and passed on.
#include <dlfcn.h>
#include <pthread.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>

namespace {
constexpr size_t kMinStackBytes = size_t{1} << 20;
}  // namespace

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t size) {
  using Fn = int (*)(pthread_attr_t*, size_t);
  static const Fn real = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  if (real == nullptr) return ENOSYS;
  return real(attr, std::max(size, kMinStackBytes));
}
