/* status.c - status strings, per-thread last error, logging. */
#include "common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

const char *spqr_status_string(spqr_status s) {
    switch (s) {
    case SPQR_OK: return "ok";
    case SPQR_ERR_INVALID_ARG: return "invalid argument";
    case SPQR_ERR_IO: return "i/o error";
    case SPQR_ERR_FORMAT: return "malformed input";
    case SPQR_ERR_UNSUPPORTED: return "unsupported";
    case SPQR_ERR_MISMATCH: return "mismatch";
    case SPQR_ERR_NUMERIC: return "numerical error";
    case SPQR_ERR_NOMEM: return "out of memory";
    case SPQR_ERR_CHECKSUM: return "checksum mismatch";
    case SPQR_ERR_NO_DEVICE: return "no usable device";
    case SPQR_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

static _Thread_local char g_last_error[1024];

const char *spqr_last_error(void) { return g_last_error; }

spqr_status spqr_fail(spqr_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_last_error, sizeof g_last_error, fmt, ap);
    va_end(ap);
    return st;
}

static spqr_log_fn g_log_cb;
static void *g_log_user;
static spqr_log_level g_log_level = SPQR_LOG_INFO;

void spqr_set_log(spqr_log_fn cb, void *user, spqr_log_level max_level) {
    g_log_cb = cb;
    g_log_user = user;
    g_log_level = max_level;
}

bool spqr_log_enabled(spqr_log_level level) {
    return g_log_cb != NULL && level <= g_log_level;
}

void spqr_log(spqr_log_level level, const char *fmt, ...) {
    if (!spqr_log_enabled(level)) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    g_log_cb(g_log_user, level, buf);
}

void spqr_free(void *p) { free(p); }

void *spqr_malloc_array(size_t n, size_t size) {
    size_t b;
    if (!spqr_mul_size(n, size, &b)) return NULL;
    return malloc(b ? b : 1);
}

void *spqr_calloc_array(size_t n, size_t size) {
    size_t b;
    if (!spqr_mul_size(n, size, &b)) return NULL;
    return calloc(b ? n : 1, b ? size : 1);
}

void *spqr_aligned_alloc(size_t bytes) {
    void *p = NULL;
    size_t b = (bytes + 63) & ~(size_t)63;
    if (b < bytes) return NULL;
    if (posix_memalign(&p, 64, b ? b : 64) != 0) return NULL;
    return p;
}
