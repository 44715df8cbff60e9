// GNC_CLONES: a hot loop built for AVX-512 and AVX2+FMA as well as the x86-64
// baseline; the loader picks what the CPU has (GCC's target_clones). Elsewhere, or
// with other compilers, one plain build.
#ifndef GNC_COMMON_SIMD_CLONES_H_
#define GNC_COMMON_SIMD_CLONES_H_

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GNC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GNC_CLONES
#endif

#endif  // GNC_COMMON_SIMD_CLONES_H_
