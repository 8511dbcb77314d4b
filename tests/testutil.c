/* testutil.c - helpers shared by the cmocka tests. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "formats/spqr/qlayer.h"
#include "kernels/cuda/cuda_rt.h"
#include "util/common.h"

#ifndef SPQR_SOURCE_DIR
#define SPQR_SOURCE_DIR "."
#endif
#ifndef SPQR_CLI_PATH
#define SPQR_CLI_PATH "spqr"
#endif

const char *tu_shared(const char *rel) {
    static char buf[4096];
    const char *root = getenv("SPQR_SHARED");
    if (root && *root)
        snprintf(buf, sizeof buf, "%s/%s", root, rel);
    else
        snprintf(buf, sizeof buf, "%s/../shared/%s", SPQR_SOURCE_DIR, rel);
    return buf;
}

int tu_have_shared(const char *rel) {
    struct stat st;
    if (stat(tu_shared(rel), &st) == 0) return 1;
    printf("SKIP: shared data %s not found\n", tu_shared(rel));
    return 0;
}

static char *slurp(FILE *f) {
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    for (;;) {
        if (n + 1 >= cap) b = realloc(b, cap *= 2);
        size_t got = fread(b + n, 1, cap - n - 1, f);
        if (got == 0) break;
        n += got;
    }
    b[n] = 0;
    return b;
}

int tu_run_cli(const char *args, char **out, char **err) {
    char ofile[4200], efile[4200], cmd[16384];
    snprintf(ofile, sizeof ofile, "%s/cli_out.txt", tu_tmpdir());
    snprintf(efile, sizeof efile, "%s/cli_err.txt", tu_tmpdir());
    const char *cli = getenv("SPQR_TEST_CLI");
    if (!cli || !*cli) cli = SPQR_CLI_PATH;
    snprintf(cmd, sizeof cmd, "%s %s >%s 2>%s </dev/null", cli, args, ofile, efile);
    int st = system(cmd);
    if (out) {
        FILE *f = fopen(ofile, "rb");
        *out = f ? slurp(f) : strdup("");
        if (f) fclose(f);
    }
    if (err) {
        FILE *f = fopen(efile, "rb");
        *err = f ? slurp(f) : strdup("");
        if (f) fclose(f);
    }
    if (st == -1 || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
}

static char g_tmp[256];

const char *tu_tmpdir(void) {
    if (!g_tmp[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(g_tmp, sizeof g_tmp, "%s/spqr_test_XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(g_tmp)) {
            perror("mkdtemp");
            abort();
        }
    }
    return g_tmp;
}

void tu_cleanup(void) {
    if (g_tmp[0]) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
        if (system(cmd) != 0) fprintf(stderr, "cleanup of %s failed\n", g_tmp);
        g_tmp[0] = 0;
    }
}

int tu_write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, n, f);
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

void tu_seed(uint64_t s) { g_rng = s ? s : 1; }

uint64_t tu_rand_u64(void) { /* xorshift64* */
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 2685821657736338717ull;
}

float tu_rand_uniform(void) { return (float)((tu_rand_u64() >> 40) * (1.0 / 16777216.0)); }

float tu_rand_normal(void) {
    float u1 = tu_rand_uniform(), u2 = tu_rand_uniform();
    if (u1 < 1e-7f) u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

int tu_have_gpu(void) {
    static int have = -1;
    if (have < 0) {
        char name[256];
        have = spqr_cuda_available(name, sizeof name) == SPQR_OK;
        if (have)
            printf("CUDA device: %s\n", name);
        else
            printf("SKIP: no CUDA device (%s)\n", spqr_last_error());
    }
    return have;
}

float *tu_rand_vec(size_t n) {
    float *x = malloc((n ? n : 1) * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++) x[i] = tu_rand_normal();
    return x;
}

void tu_spqr_random_outliers(struct spqr_qlayer *q, double share, float sd) {
    size_t cap = 16, n = 0;
    free(q->ol_col);
    free(q->ol_val);
    q->ol_col = malloc(cap * sizeof *q->ol_col);
    q->ol_val = malloc(cap * sizeof *q->ol_val);
    assert_non_null(q->ol_col);
    assert_non_null(q->ol_val);
    assert_non_null(q->row_ptr);
    q->row_ptr[0] = 0;
    for (int r = 0; r < q->rows; r++) {
        for (int j = 0; j < q->cols; j++) {
            if (!(tu_rand_uniform() < share)) continue;
            if (n == cap) {
                cap *= 2;
                q->ol_col = realloc(q->ol_col, cap * sizeof *q->ol_col);
                q->ol_val = realloc(q->ol_val, cap * sizeof *q->ol_val);
                assert_non_null(q->ol_col);
                assert_non_null(q->ol_val);
            }
            q->ol_col[n] = (uint32_t)j;
            q->ol_val[n] = spqr_f32_to_f16(sd * tu_rand_normal());
            n++;
        }
        q->row_ptr[r + 1] = (uint32_t)n;
    }
    q->n_outliers = (int64_t)n;
}

void tu_spqr_random_stats2(struct spqr_qlayer *q) {
    const float qmax = (float)((1 << q->wbits) - 1);
    for (size_t i = 0; i < (size_t)q->ngroups * (size_t)q->nrb; i++) {
        q->s2_scale[i] = spqr_f32_to_f16(0.002f + 0.01f * tu_rand_uniform());
        q->s2_zero[i] = spqr_f32_to_f16(-1.0f - 2.0f * tu_rand_uniform());
        q->z2_scale[i] = spqr_f32_to_f16(qmax / (float)((1 << q->zbits) - 1) * (0.5f + 0.5f * tu_rand_uniform()));
        q->z2_zero[i] = spqr_f32_to_f16(-0.5f * tu_rand_uniform());
    }
}
