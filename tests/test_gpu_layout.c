/* test_gpu_layout.c - the SpQR GPU layout round trip on the CPU (no GPU
 * needed; runs in every build, CI included).
 *
 * Random SpQR layers (all wbits 2..8, beta1 5/8/12/16/32/128, beta2
 * 0/3/16/32, statistic bits 3 and 6, shapes 1x1, 17x172, 33x300, 40x520,
 * with outliers) are packed into the GPU layout on the host
 * (spqr_gpu_layout_pack, the packer the CUDA upload uses) and every weight is
 * decoded with the layout's own decode functions (gpu_layout.h, the ones the
 * reference kernel runs), outliers added from the layout's buckets (fast
 * layout) or CSR (generic layout), and compared with spqr_qlayer_dequantize.
 *
 * Tolerance: where the layout holds the statistics exactly
 * (spqr_gpu_plan.exact_stats: the generic layout, fp16 statistics, bilevel
 * statistics with 4-bit fields) the decoded weights must be bitwise equal.
 * Where it rounds the first-level scale s and zero z to fp16 (fast layout,
 * bilevel with sbits or zbits > 4 or beta2 not a multiple of 16), with
 * m = |s| (|code| + |z|):
 *     |w_gpu - w| <= 2^-10 (1 + 2^-6) m + 2^-24 (|code| + |z| + 1)
 *                    + 2^-22 (m + |outlier|)
 * (s and z each within 2^-11 relative, or 2^-25 absolute for fp16
 * subnormals, plus float32 rounding of the three operations).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/spqr/cuda/gpu_layout.h"
#include "formats/spqr/qlayer.h"
#include "formats/spqr/packed.h"
#include "format/qformat.h"
#include "testutil.h"

static uint16_t h(float f) { return spqr_f32_to_f16(f); }

/* a random, valid SpQR layer with statistics quantizer sq (bilevel only);
 * outliers with probability ol_frac per weight */
static void layer_random_sq(spqr_qlayer *q, int R, int C, int wbits, int beta1, int beta2, int sbits, int zbits,
                            int sq, double ol_frac) {
    assert_int_equal(spqr_qlayer_alloc(q, R, C, wbits, beta1, beta2, sbits, zbits), SPQR_OK);
    const uint32_t qmax = (1u << wbits) - 1u;
    for (int j = C - 1; j > 0; j--) {
        const int k = (int)(tu_rand_u64() % (uint64_t)(j + 1));
        const int32_t t = q->perm[j];
        q->perm[j] = q->perm[k];
        q->perm[k] = t;
    }
    for (size_t i = 0; i < (size_t)R * C; i++) q->codes[i] = (uint8_t)(tu_rand_u64() % (qmax + 1));
    const size_t ns = (size_t)q->ngroups * R;
    if (beta2 > 0) {
        for (size_t i = 0; i < ns; i++) {
            q->scale_code[i] = (uint8_t)(tu_rand_u64() % (1u << sbits));
            q->zero_code[i] = (uint8_t)(tu_rand_u64() % (1u << zbits));
        }
        const size_t n2 = (size_t)q->ngroups * q->nrb;
        for (size_t i = 0; i < n2; i++) {
            q->s2_scale[i] = h(0.002f + 0.02f * tu_rand_uniform());
            q->s2_zero[i] = h(-1.0f + 0.9f * tu_rand_uniform());
            q->z2_scale[i] = h((float)qmax / (float)(1u << zbits) * (0.6f + 0.8f * tu_rand_uniform()));
            q->z2_zero[i] = h(tu_rand_uniform() - 0.5f);
        }
        assert_int_equal(spqr_qlayer_set_statq(q, sq), SPQR_OK); /* uniform: zeros at the mid-points */
        if (sq == SPQR_SQ_KMEANS) {
            for (int i = 0; i < (1 << sbits); i++) q->cb_scale[i] = h(0.002f + 0.03f * tu_rand_uniform());
            for (int i = 0; i < (1 << zbits); i++) q->cb_zero[i] = h((float)qmax * (1.2f * tu_rand_uniform() - 0.1f));
        }
    } else {
        for (size_t i = 0; i < ns; i++) {
            q->scale_f16[i] = h(0.002f + 0.03f * tu_rand_uniform());
            q->zero_f16[i] = h((float)qmax * tu_rand_uniform());
        }
    }
    tu_spqr_random_outliers(q, ol_frac, 0.3f);
    assert_int_equal(spqr_qlayer_validate(q), SPQR_OK);
}

/* outlier value of (r, permuted column j) as the layout stores it (0 if none) */
static float layout_outlier(const spqr_gpu_plan *p, const spqr_gpu_sections *s, int r, int j, int *found) {
    const spqr_gpu_geom *L = &p->geo;
    *found = 0;
    float v = 0.f;
    if (L->fast) {
        const int tile = r / SPQR_GPU_TILE_ROWS, lr = r % SPQR_GPU_TILE_ROWS, q = j / SPQR_GPU_QUAD_COLS;
        const size_t b = (size_t)tile * L->nquads + q;
        for (uint32_t e = s->ol_off[b]; e < s->ol_off[b + 1]; e++)
            if (spqr_gpu_ol_row(s->ol[e]) == lr && spqr_gpu_ol_col(s->ol[e]) == j % SPQR_GPU_QUAD_COLS) {
                v = spqr_gpu_h2f(s->ol[e] >> 16);
                (*found)++;
            }
    } else {
        for (uint32_t k = s->grow[r]; k < s->grow[r + 1]; k++)
            if (s->gcol[k] == (uint32_t)j) {
                v = s->gval[k];
                (*found)++;
            }
    }
    return v;
}

typedef struct stats_acc {
    int sq_layers[SPQR_SQ_COUNT], sq_exact[SPQR_SQ_COUNT], sq_bil4[SPQR_SQ_COUNT];
    int layers, exact_layers, rounded_layers, fast_layers, generic_layers;
    long long weights, outliers;
    double worst_ratio; /* max |err| / tol over rounded layers */
} stats_acc;

static void check_layer(const spqr_qlayer *q, stats_acc *acc) {
    spqr_gpu_plan p;
    assert_int_equal(spqr_gpu_layout_plan(q, &p), SPQR_OK);
    unsigned char *img = NULL;
    assert_int_equal(spqr_gpu_layout_pack(q, &p, &img), SPQR_OK);
    assert_non_null(img);
    spqr_gpu_sections s;
    spqr_gpu_layout_sections(&p, img, &s);
    const spqr_gpu_geom *L = &p.geo;
    const int R = q->rows, C = q->cols;
    assert_int_equal(L->rows, R);
    assert_int_equal(L->cols, C);
    assert_true(L->rows_pad % SPQR_GPU_TILE_ROWS == 0 && L->rows_pad >= R && L->rows_pad < R + SPQR_GPU_TILE_ROWS);
    assert_true(L->cols_pad % SPQR_GPU_QUAD_COLS == 0 && L->cols_pad >= C && L->cols_pad < C + SPQR_GPU_QUAD_COLS);
    assert_int_equal(L->fast, q->beta1 == 8 || q->beta1 % 16 == 0);
    assert_true(p.total >= p.o_oval + p.b_oval && p.o_perm % SPQR_GPU_ALIGN == 0);
    assert_memory_equal(s.perm, q->perm, sizeof(int32_t) * (size_t)C);

    float *w = malloc(sizeof(float) * (size_t)R * C);
    assert_non_null(w);
    spqr_qlayer_dequantize(q, w); /* original column order */

    int64_t nfound = 0;
    for (int r = 0; r < R; r++)
        for (int j = 0; j < C; j++) {
            float got = L->fast ? spqr_gpu_fast_weight(L, s.codes, s.stats, s.stats2, r, j)
                                : spqr_gpu_generic_weight(L, s.gcodes, s.gstats, r, j);
            int found;
            const float ol = layout_outlier(&p, &s, r, j, &found);
            assert_true(found <= 1);
            if (found) got = got + ol;
            nfound += found;
            const float want = w[(size_t)r * C + s.perm[j]];
            if (p.exact_stats) {
                if (memcmp(&got, &want, sizeof got) != 0)
                    fail_msg("%dx%d wbits %d beta1 %d beta2 %d s/zbits %d/%d: weight (%d, %d) = %.9g, want %.9g", R, C,
                             q->wbits, q->beta1, q->beta2, q->sbits, q->zbits, r, j, got, want);
            } else {
                float sc, z;
                spqr_qlayer_group_stats(q, r, j / q->beta1, &sc, &z);
                const double c = q->codes[(size_t)r * C + j];
                const double m = fabs(sc) * (c + fabs(z));
                const double tol = ldexp(1.0 + ldexp(1.0, -6), -10) * m + ldexp(c + fabs(z) + 1.0, -24) +
                                   ldexp(m + fabs(ol), -22);
                const double err = fabs((double)got - (double)want);
                if (!(err <= tol))
                    fail_msg("%dx%d wbits %d beta1 %d beta2 %d s/zbits %d/%d: weight (%d, %d) = %.9g, want %.9g "
                             "(error %.3g > tolerance %.3g)",
                             R, C, q->wbits, q->beta1, q->beta2, q->sbits, q->zbits, r, j, got, want, err, tol);
                if (tol > 0 && err / tol > acc->worst_ratio) acc->worst_ratio = err / tol;
            }
        }
    assert_int_equal(nfound, q->n_outliers); /* every outlier exactly once */

    if (L->fast) {
        /* the buckets hold exactly the outliers; the row-ordered copy is the CSR */
        assert_int_equal(s.ol_off[(size_t)L->ntiles * L->nquads], (uint32_t)q->n_outliers);
        assert_memory_equal(s.orow, q->row_ptr, sizeof(uint32_t) * ((size_t)R + 1));
        if (q->n_outliers > 0) {
            assert_memory_equal(s.ocol, q->ol_col, sizeof(uint32_t) * (size_t)q->n_outliers);
            assert_memory_equal(s.oval, q->ol_val, sizeof(uint16_t) * (size_t)q->n_outliers);
        }
        acc->fast_layers++;
    } else {
        acc->generic_layers++;
    }
    acc->layers++;
    acc->sq_layers[q->sq]++;
    if (p.exact_stats) acc->sq_exact[q->sq]++;
    if (L->smode == SPQR_GPU_SM_BIL4) acc->sq_bil4[q->sq]++;
    if (p.exact_stats) acc->exact_layers++;
    else acc->rounded_layers++;
    acc->weights += (long long)R * C;
    acc->outliers += q->n_outliers;
    free(w);
    free(img);
}

/* On layers of model size the format's device-size estimate (what the GPU
 * backend uses to decide what fits) is an upper bound of the real layout,
 * for every statistics quantizer (kmeans and 4+-bit statistics hold fp16
 * first-level statistics on the device, which the file does not store). */
static void test_estimate(void **state) {
    (void)state;
    tu_seed(7);
    static const int shapes[][2] = {{256, 512}, {512, 512}, {512, 1408}, {1408, 512}};
    static const int bits[][2] = {{3, 3}, {4, 4}, {6, 6}};
    for (size_t si = 0; si < 4; si++)
        for (size_t bi = 0; bi < 3; bi++)
            for (int sq = 0; sq < SPQR_SQ_COUNT; sq++)
                for (int wbits = 2; wbits <= 4; wbits++) {
                    spqr_qlayer q;
                    layer_random_sq(&q, shapes[si][0], shapes[si][1], wbits, 16, 16, bits[bi][0], bits[bi][1], sq, 0.03);
                    spqr_gpu_plan p;
                    assert_int_equal(spqr_gpu_layout_plan(&q, &p), SPQR_OK);
                    spqr_packed pk;
                    assert_int_equal(spqr_pack(&q, &pk), SPQR_OK);
                    const size_t est = spqr_qformat_find("spqr")->cuda_estimate(&pk);
                    if (est < p.total)
                        fail_msg("%dx%d w%d s%d %s: estimate %zu < device layout %zu bytes", shapes[si][0], shapes[si][1],
                                 wbits, bits[bi][0], spqr_statq_name(sq), est, p.total);
                    spqr_packed_free(&pk);
                    spqr_qlayer_free(&q);
                }
}

static void test_roundtrip(void **state) {
    (void)state;
    static const int shapes[][2] = {{1, 1}, {17, 172}, {33, 300}, {40, 520}};
    static const int beta1s[] = {5, 8, 12, 16, 32, 128};
    static const int beta2s[] = {0, 3, 16, 32};
    static const int sbits_z[][2] = {{3, 3}, {4, 6}}; /* 4-bit fields (BIL4) and rounded fp16 */
    stats_acc acc;
    memset(&acc, 0, sizeof acc);
    tu_seed(20261207);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int wbits = 2; wbits <= 8; wbits++)
            for (size_t b1 = 0; b1 < sizeof beta1s / sizeof beta1s[0]; b1++)
                for (size_t b2 = 0; b2 < sizeof beta2s / sizeof beta2s[0]; b2++)
                    for (size_t sb = 0; sb < (beta2s[b2] ? 2u : 1u); sb++)
                        for (int sq = 0; sq < (beta2s[b2] ? SPQR_SQ_COUNT : 1); sq++) {
                            /* every statistics quantizer (qlayer.h): uniform runs the minmax modes with
                             * its mid-point zeros, kmeans the fp16 first-level statistics (exact) */
                            const int R = shapes[si][0], C = shapes[si][1];
                            spqr_qlayer q;
                            layer_random_sq(&q, R, C, wbits, beta1s[b1], beta2s[b2], sbits_z[sb][0], sbits_z[sb][1],
                                            sq, R * C < 16 ? 0.5 : 0.03);
                            check_layer(&q, &acc);
                            spqr_qlayer_free(&q);
                        }
    printf("gpu layout round trip: %d layers (%d fast, %d generic; %d exact, %d with fp16-rounded statistics), "
           "%lld weights, %lld outliers; rounded layers: worst error / tolerance %.3f\n",
           acc.layers, acc.fast_layers, acc.generic_layers, acc.exact_layers, acc.rounded_layers, acc.weights,
           acc.outliers, acc.worst_ratio);
    assert_true(acc.fast_layers > 0 && acc.generic_layers > 0 && acc.rounded_layers > 0 && acc.outliers > 0);
    printf("statistics quantizers: minmax %d layers (%d exact, %d BIL4), uniform %d (%d exact, %d BIL4), kmeans %d "
           "(%d exact, %d BIL4)\n",
           acc.sq_layers[0], acc.sq_exact[0], acc.sq_bil4[0], acc.sq_layers[1], acc.sq_exact[1], acc.sq_bil4[1],
           acc.sq_layers[2], acc.sq_exact[2], acc.sq_bil4[2]);
    /* uniform reaches the exact second-level mode, kmeans never uses it and is always exact */
    assert_true(acc.sq_layers[1] > 0 && acc.sq_bil4[1] > 0 && acc.sq_exact[1] > 0);
    assert_true(acc.sq_layers[2] > 0 && acc.sq_bil4[2] == 0 && acc.sq_exact[2] == acc.sq_layers[2]);
}

/* The index helpers the kernels use agree with the layout's description:
 * every (pair, element) of a window has a distinct location inside the
 * lane's B words, and bit scales are those of the slots. */
static void test_code_locations(void **state) {
    (void)state;
    const int Bs[] = {2, 3, 4, 8};
    for (size_t bi = 0; bi < 4; bi++) {
        const int B = Bs[bi];
        uint32_t used[8] = {0};
        for (int p = 0; p < SPQR_GPU_PAIRS; p++)
            for (int e = 0; e < 2; e++) {
                int wd, bit;
                spqr_gpu_code_loc(B, p, e, &wd, &bit);
                if (wd < 0) { /* B = 3 spread pair: bit b of the code in word b */
                    assert_int_equal(B, 3);
                    for (int b = 0; b < 3; b++) {
                        assert_true(bit >= 0 && bit < 32);
                        assert_false(used[b] >> bit & 1u);
                        used[b] |= 1u << bit;
                    }
                    continue;
                }
                assert_true(wd >= 0 && wd < B && bit >= 0 && bit + B <= 32);
                const uint32_t mask = ((1u << B) - 1u) << bit;
                assert_false(used[wd] & mask);
                used[wd] |= mask;
            }
        /* all 32 codes of B bits fill the B words */
        int bits = 0;
        for (int i = 0; i < B; i++) bits += __builtin_popcount(used[i]);
        assert_int_equal(bits, 32 * B);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_code_locations),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_estimate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
