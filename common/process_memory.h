// Process-wide memory settings of the daemons (not of the client library: a user's
// trainer keeps its own allocator settings).
#ifndef GNC_COMMON_PROCESS_MEMORY_H_
#define GNC_COMMON_PROCESS_MEMORY_H_

namespace gnc {

// RetainFreedMemory: every round, gRPC allocates and frees megabytes of receive
// buffers per stream. glibc's malloc would return them to the kernel (munmap, heap
// trimming) and take them back on the next round, each page faulted in and zeroed
// again (about a tenth of a round's CPU time at 4 Mi floats). This keeps freed memory
// in the process for reuse: allocations up to 32 MiB come from the heap, a heap is
// trimmed only past 64 MiB free at its top, and the process has at most two arenas
// (each arena keeps its own free memory). Call once, before any thread starts. The
// cost: the resident size stays up to about 64 MiB per arena above what is in use.
void RetainFreedMemory();

}  // namespace gnc

#endif  // GNC_COMMON_PROCESS_MEMORY_H_
