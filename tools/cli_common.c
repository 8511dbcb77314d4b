/* cli_common.c - error reporting, option parsing, progress for the CLI. */
#include <errno.h>
#include <time.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

int cli_fail(spqr_status st) {
    fprintf(stderr, "spqr: error: %s\n", spqr_last_error()[0] ? spqr_last_error() : spqr_status_string(st));
    return CLI_EXIT_FAIL;
}

int cli_usage(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "spqr %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(run 'spqr %s --help' for usage)\n", cmd);
    va_end(ap);
    return CLI_EXIT_USAGE;
}

bool cli_parse_int(const char *s, long lo, long hi, long *out) {
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

bool cli_parse_double(const char *s, double *out) {
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v)) return false;
    *out = v;
    return true;
}

bool cli_tty(void) { return isatty(2) && !getenv("CI"); }

static void log_cb(void *user, spqr_log_level level, const char *msg) {
    (void)user;
    const char *tag = level == SPQR_LOG_ERROR ? "error: " : level == SPQR_LOG_WARN ? "warning: " : "";
    cli_progress_done();
    fprintf(stderr, "spqr: %s%s\n", tag, msg);
}

void cli_install_log(bool verbose) { spqr_set_log(log_cb, NULL, verbose ? SPQR_LOG_INFO : SPQR_LOG_WARN); }

static bool g_progress_open;

void cli_progress(const char *fmt, ...) {
    if (!cli_tty()) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "\r\033[K");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fflush(stderr);
    g_progress_open = true;
}

void cli_progress_done(void) {
    if (g_progress_open) {
        fprintf(stderr, "\n");
        g_progress_open = false;
    }
}

const char *cli_default_model(void) {
    static char buf[4096];
    const char *root = getenv("SPQR_SHARED");
    snprintf(buf, sizeof buf, "%s/models/ref-40m", root && *root ? root : "../shared");
    return buf;
}

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int cli_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "spqr: error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return CLI_EXIT_FAIL;
}

char *cli_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        char *nb = cap > ((size_t)1 << 40) ? NULL : realloc(buf, 2 * cap + 1);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    bool bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}
