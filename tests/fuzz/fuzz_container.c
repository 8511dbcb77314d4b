/* fuzz_container.c - libFuzzer target for the .spqr container reader.
 *
 * Through CMake:
 *   CC=clang cmake -S . -B build-fuzz -DSPQR_FUZZ=ON -DSPQR_CUDA=OFF
 *   cmake --build build-fuzz --target fuzz_container -j2
 * Standalone (instruments the reader itself, which gives the fuzzer coverage
 * feedback from the code under test):
 *   clang -std=c11 -g -O1 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
 *     -I include -I src tests/fuzz/fuzz_container.c src/format/container.c \
 *     src/util/status.c src/util/files.c src/util/numfmt.c \
 *     -lxxhash -lcjson -fopenmp -lm -o fuzz_container
 * Seed corpus: SPQR_FUZZ_SEED_DIR=corpus ./fuzz_container -runs=0 writes a
 * few valid containers into corpus/ (which must exist), then
 *   ./fuzz_container corpus -max_total_time=60
 *
 * Each input is validated twice in memory: as-is (the header checksum
 * rejects nearly all mutations early) and with the header checksum skipped,
 * so that mutated inputs reach the directory, range, overlap and metadata
 * checks, the accessors and verify().
 */
#include "io/container.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static void write_seed(const char *dir, int which) {
    char path[4096];
    snprintf(path, sizeof path, "%s/seed%d.spqr", dir, which);
    spqr_cwriter *w = NULL;
    if (spqr_cwriter_open(path, &w) != SPQR_OK) return;
    uint8_t buf[300];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)(i * 37 + which);
    uint64_t d2[2] = {3, 5}, d1[1] = {7}, d0[1] = {0}, d3[3] = {2, 3, 4};
    if (which >= 1) {
        spqr_cwriter_add(w, "tok_embeddings.weight", SPQR_DT_F16, 2, d2, buf, 30);
        spqr_cwriter_add(w, "norm.weight", SPQR_DT_F32, 1, d1, buf, 28);
    }
    if (which >= 2) {
        spqr_cwriter_add(w, "blk.0.wq.codes", SPQR_DT_U8, 3, d3, buf, 24);
        spqr_cwriter_add(w, "blk.0.wq.outliers", SPQR_DT_U32, 1, d0, NULL, 0);
        spqr_cwriter_add(w, "scalar", SPQR_DT_I32, 0, NULL, buf, 4);
        spqr_cwriter_add(w, "blk.0.wq.stats", SPQR_DT_BF16, 3, d3, buf, 48);
    }
    spqr_cwriter_set_metadata(w, which ? "{\"model\":{\"dim\":5},\"tokenizer\":\"sentencepiece\",\"ok\":[true,null,1e3]}" : "{}");
    spqr_cwriter_finish(w);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *dir = getenv("SPQR_FUZZ_SEED_DIR");
    if (dir && *dir)
        for (int k = 0; k < 3; k++) write_seed(dir, k);
    return 0;
}

static void exercise(const spqr_container *c) {
    volatile uint8_t sink = 0;
    const char *meta = spqr_container_metadata(c);
    sink ^= (uint8_t)strlen(meta);
    size_t n = spqr_container_count(c);
    for (size_t i = 0; i < n; i++) {
        spqr_ctensor t, f;
        if (spqr_container_tensor(c, i, &t) != SPQR_OK) abort();
        if (spqr_container_find(c, t.name, &f) != SPQR_OK || f.data != t.data || f.nbytes != t.nbytes) abort();
        if (spqr_container_index(c, t.name) != (long)i) abort();
        if (t.ndim < 0 || t.ndim > SPQR_CONTAINER_MAX_NDIM || (int)t.dtype >= SPQR_DT_COUNT) abort();
        uint64_t want = spqr_dtype_size(t.dtype);
        for (int k = 0; k < t.ndim; k++) want *= t.dims[k]; /* validated: cannot overflow */
        if (want != t.nbytes) abort();
        if (t.nbytes) { /* touch both ends: ASan catches a range outside the input */
            const uint8_t *p = t.data;
            sink ^= p[0];
            sink ^= p[t.nbytes - 1];
        }
    }
    char bad[32];
    (void)spqr_container_verify(c, bad, sizeof bad);
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    spqr_container *c = NULL;
    if (spqr_container_open_mem(data, size, "fuzz.spqr", 0, &c) == SPQR_OK) {
        exercise(c);
        spqr_container_close(c);
    }
    c = NULL;
    if (spqr_container_open_mem(data, size, "fuzz.spqr", SPQR_CONTAINER_NO_HEADER_CHECKSUM, &c) == SPQR_OK) {
        exercise(c);
        spqr_container_close(c);
    } else if (c != NULL) {
        abort();
    }
    return 0;
}
