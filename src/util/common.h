/* common.h - internal helpers shared by every part of libspqr. */
#ifndef SPQR_COMMON_H
#define SPQR_COMMON_H

#include "spqr.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#define SPQR_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SPQR_PRINTF(a, b)
#endif

/* Record a failure for spqr_last_error() and return st (so callers can write
 * `return spqr_fail(SPQR_ERR_FORMAT, "%s: bad magic", path);`). */
spqr_status spqr_fail(spqr_status st, const char *fmt, ...) SPQR_PRINTF(2, 3);

/* Emit a diagnostic through the installed log callback (no-op without one). */
void spqr_log(spqr_log_level level, const char *fmt, ...) SPQR_PRINTF(2, 3);
bool spqr_log_enabled(spqr_log_level level);

/* Overflow-safe size arithmetic: return false on overflow. */
static inline bool spqr_mul_size(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool spqr_add_size(size_t a, size_t b, size_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

/* malloc/calloc that return NULL on overflow; free with free(). */
void *spqr_malloc_array(size_t n, size_t size);
void *spqr_calloc_array(size_t n, size_t size);
/* 64-byte aligned allocation; free with free(). */
void *spqr_aligned_alloc(size_t bytes);

/* ---- number formats ---------------------------------------------------- */
static inline float spqr_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t spqr_f32_to_bf16(float f) { /* round to nearest even */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
float spqr_f16_to_f32(uint16_t h);
uint16_t spqr_f32_to_f16(float f); /* round to nearest even, saturates to inf */

typedef enum spqr_dtype {
    SPQR_DT_F32 = 0,
    SPQR_DT_F16 = 1,
    SPQR_DT_BF16 = 2,
    SPQR_DT_U8 = 3,
    SPQR_DT_I32 = 4,
    SPQR_DT_U16 = 5,
    SPQR_DT_U32 = 6,
    SPQR_DT_COUNT
} spqr_dtype;
size_t spqr_dtype_size(spqr_dtype dt);
const char *spqr_dtype_name(spqr_dtype dt);

/* Convert n elements of a float-like dtype (f32/f16/bf16) to float32. */
void spqr_to_f32(const void *src, spqr_dtype dt, size_t n, float *dst);

/* ---- files --------------------------------------------------------------- */
typedef struct spqr_mmap {
    void *data;
    size_t size;
    char *path; /* owned copy, for messages */
} spqr_mmap;
/* Map a whole file read-only. An empty file maps with data == NULL. */
spqr_status spqr_mmap_open(const char *path, spqr_mmap *m);
void spqr_mmap_close(spqr_mmap *m);

/* A zero-filled array of `bytes` backed by an unlinked temporary file in
 * $TMPDIR (default /tmp), mapped shared: for scratch data larger than RAM
 * should hold (spill.c). Release with spqr_spill_free(p, bytes). */
spqr_status spqr_spill_alloc(size_t bytes, void **out);
void spqr_spill_free(void *p, size_t bytes);
/* The memory cap for calibration activation streams: $SPQR_STREAM_MIB MiB,
 * else half the machine's physical memory. */
size_t spqr_stream_cap_bytes(void);

/* Read a whole file into a NUL-terminated malloc'd buffer. */
spqr_status spqr_read_file(const char *path, char **data, size_t *size);

/* Joins dir and name into a malloc'd path. */
char *spqr_path_join(const char *dir, const char *name);
bool spqr_is_dir(const char *path);
bool spqr_file_exists(const char *path);

/* Threads: number of workers kernels should use. */
int spqr_num_threads(void);

/* splitmix64: the next value of a 64-bit counter-based generator (seeding,
 * shuffles, window draws; one definition for every user). */
static inline uint64_t spqr_splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Monotonic wall clock in seconds. */
double spqr_now(void);

#endif
