/* testutil.h - helpers shared by the cmocka tests. */
#ifndef SPQR_TESTUTIL_H
#define SPQR_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "spqr.h"

/* Path of a file in the shared data folder ($SPQR_SHARED or ../shared beside
 * the source tree). Returns a static buffer (overwritten by the next call). */
const char *tu_shared(const char *rel);
/* True if the shared folder holds rel; otherwise prints a SKIP line. */
int tu_have_shared(const char *rel);
/* 1 when a usable CUDA device exists (asked once; prints the device, or
 * SKIP and the reason). */
int tu_have_gpu(void);

/* Run the spqr CLI (the one built beside the tests, or $SPQR_TEST_CLI when
 * set, e.g. for test binaries copied to another machine) with the given
 * argument string (shell syntax). Captures
 * stdout and stderr into malloc'd strings (may be NULL if not wanted).
 * Returns the exit status (or -1). */
int tu_run_cli(const char *args, char **out, char **err);

/* A fresh temporary directory (static buffer); removed by tu_cleanup(). */
const char *tu_tmpdir(void);
void tu_cleanup(void);
/* Write bytes to path; returns 0 on success. */
int tu_write_file(const char *path, const void *data, size_t n);

/* Deterministic random numbers. */
void tu_seed(uint64_t s);
uint64_t tu_rand_u64(void);
float tu_rand_uniform(void);  /* [0,1) */
float tu_rand_normal(void);
/* n standard-normal floats (malloc'ed; asserts on failure). */
float *tu_rand_vec(size_t n);

/* Random fp16 outliers for an SpQR layer (formats/spqr/qlayer.h) whose rows,
 * cols and row_ptr are set: each weight is an outlier with probability
 * share, its value sd * N(0, 1); fills ol_col, ol_val, row_ptr, n_outliers
 * (replacing any outliers it had). */
struct spqr_qlayer;
void tu_spqr_random_outliers(struct spqr_qlayer *q, double share, float sd);
/* Random fp16 second-level statistics (s2_scale, s2_zero, z2_scale, z2_zero)
 * of a bilevel SpQR layer, sized so that its dequantized weights stay O(1). */
void tu_spqr_random_stats2(struct spqr_qlayer *q);

#endif
