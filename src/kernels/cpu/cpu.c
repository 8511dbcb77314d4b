/* cpu.c - CPU kernel variant selection (ref / AVX2 / AVX-512) and per-thread
 * scratch memory, shared by every format's CPU kernels. */
#include "cpu.h"

#include <cpuid.h>
#include <stdatomic.h>
#include <stdlib.h>

/* ---- variant selection ---------------------------------------------------- */

enum { K_UNSET = SPQR_CPU_UNSET, K_REF = SPQR_CPU_REF, K_AVX2 = SPQR_CPU_AVX2, K_AVX512 = SPQR_CPU_AVX512 };
static const char *const k_kind_names[] = {"unset", "ref", "avx2", "avx512"};
static _Atomic int g_kind = K_UNSET;

/* F16C (CPUID.1:ECX bit 29); clang 14's __builtin_cpu_supports lacks it. */
static bool cpu_has_f16c(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    return (c >> 29) & 1u;
}

static bool cpu_has(int kind) {
    __builtin_cpu_init();
    switch (kind) {
    case K_REF: return true;
    case K_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
    case K_AVX512:
        return cpu_has(K_AVX2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    default: return false;
    }
}

static int auto_kind(void) {
    if (cpu_has(K_AVX512)) return K_AVX512;
    if (cpu_has(K_AVX2)) return K_AVX2;
    return K_REF;
}

static int kind_from_name(const char *name) {
    for (int k = K_REF; k <= K_AVX512; k++)
        if (strcmp(name, k_kind_names[k]) == 0) return k;
    return -1;
}

static int active_kind(void);
spqr_cpu_kind spqr_cpu_kind_active(void) { return (spqr_cpu_kind)active_kind(); }

static int active_kind(void) {
    int k = atomic_load_explicit(&g_kind, memory_order_relaxed);
    if (k != K_UNSET) return k;
    k = auto_kind();
    const char *env = getenv("SPQR_KERNEL");
    if (env && *env && strcmp(env, "auto") != 0) {
        int e = kind_from_name(env);
        if (e > 0 && cpu_has(e)) k = e;
        else spqr_log(SPQR_LOG_WARN, "SPQR_KERNEL=%s is %s; using %s", env, e < 0 ? "unknown" : "not supported here",
                      k_kind_names[k]);
    }
    int expected = K_UNSET;
    atomic_compare_exchange_strong(&g_kind, &expected, k);
    return atomic_load(&g_kind);
}

spqr_status spqr_kernel_force(const char *name) {
    if (!name || strcmp(name, "auto") == 0) {
        atomic_store(&g_kind, auto_kind());
        return SPQR_OK;
    }
    int k = kind_from_name(name);
    if (k < 0) return spqr_fail(SPQR_ERR_INVALID_ARG, "unknown kernel '%s' (ref, avx2, avx512, auto)", name);
    if (!cpu_has(k)) return spqr_fail(SPQR_ERR_UNSUPPORTED, "kernel '%s' is not supported by this CPU", name);
    atomic_store(&g_kind, k);
    return SPQR_OK;
}

const char *spqr_kernel_name(void) { return k_kind_names[active_kind()]; }

bool spqr_kernel_supported(const char *name) {
    int k = name ? kind_from_name(name) : -1;
    return k > 0 && cpu_has(k);
}

/* ---- per-thread scratch ---------------------------------------------------- */

static _Thread_local void *g_scratch;
static _Thread_local size_t g_scratch_bytes;

void *spqr_cpu_scratch(size_t bytes) {
    if (bytes > g_scratch_bytes) {
        free(g_scratch);
        g_scratch = spqr_aligned_alloc(bytes);
        g_scratch_bytes = g_scratch ? bytes : 0;
    }
    return g_scratch;
}

void spqr_kernel_scratch_release(void) {
    free(g_scratch);
    g_scratch = NULL;
    g_scratch_bytes = 0;
}
