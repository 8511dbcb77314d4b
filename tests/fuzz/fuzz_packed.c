/* fuzz_packed.c - libFuzzer target for the packed-layer reader
 * (spqr_packed_from_sections, what load_spqr.c calls on every quantized
 * linear of a .spqr file) and for the kernels that run on what it accepts.
 *
 * The input is read as: 7 geometry bytes (rows, cols, wbits, beta1, beta2,
 * sbits, zbits, each reduced to a small valid-looking range), 2 bytes of
 * outlier count, 1 byte choosing the outlier-count width (bits 0-1) and the
 * statistics quantizer (bits 2-3: minmax, uniform, kmeans, or 3, which the
 * reader must refuse), then the bytes of every section of that geometry in the
 * order spqr_packed_sections lists them (missing bytes are zero). A layer the
 * reader accepts is multiplied by the scalar reference and by the selected
 * SIMD kernel on one and on three tokens: under ASan/UBSan any out-of-bounds
 * access, however the codes, statistics, permutation and outliers are set,
 * is a finding (their numeric agreement is the job of tests/test_kernels.c;
 * statistics taken from fuzz bytes can be huge or NaN).
 *
 * Run: build with -DSPQR_FUZZ=ON (see CMakeLists.txt), then
 *   ./fuzz_packed -max_total_time=30 corpus_dir
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/spqr/packed.h"
#include "formats/spqr/cpu/qgemm.h"
#include "kernels/cpu/cpu.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const k_sections[] = {"codes", "stat_codes", "stats2", "stats", "perm", "ol_count", "ol_col",
                                         "ol_val"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 10) return 0;
    spqr_packed_geom g;
    g.rows = 1 + data[0] % 40;
    g.cols = 1 + data[1] % 80;
    g.wbits = 2 + data[2] % 7;
    g.beta1 = 1 + data[3] % (g.cols + 8); /* sometimes larger than cols */
    g.beta2 = data[4] % 3 == 0 ? 0 : 1 + data[4] % 33;
    g.sbits = 1 + data[5] % 8;
    g.zbits = 1 + data[6] % 8;
    static const int32_t ocw[4] = {0, 1, 2, 4};
    g.ocw = ocw[data[9] % 4];
    g.sq = (data[9] >> 2) % 4; /* statistics quantizer; 3 and non-minmax with beta2 = 0 are invalid */
    const int64_t n_ol = (int64_t)(data[7] | data[8] << 8) % (g.rows * g.cols + 2);
    size_t pos = 10;
    spqr_packed_section sec[8];
    void *buf[8] = {0};
    int nsec = 0;
    for (int s = 0; s < 8; s++) {
        size_t bytes = 0;
        if (spqr_packed_section_bytes(&g, k_sections[s], n_ol, &bytes) != SPQR_OK) continue; /* not for this geometry */
        buf[nsec] = calloc(1, bytes ? bytes : 1);
        if (!buf[nsec]) break;
        size_t take = size - pos < bytes ? size - pos : bytes;
        memcpy(buf[nsec], data + pos, take);
        pos += take;
        sec[nsec].name = k_sections[s];
        sec[nsec].data = buf[nsec];
        sec[nsec].bytes = bytes;
        nsec++;
    }
    spqr_packed p;
    memset(&p, 0, sizeof p);
    if (spqr_packed_from_sections(&g, sec, nsec, &p) == SPQR_OK) {
        float x[3 * 80], y[3 * 40];
        for (int i = 0; i < 3 * g.cols; i++) x[i] = (float)((i * 7919) % 13) - 6.0f;
        for (int nt = 1; nt <= 3; nt += 2) {
            if (spqr_qgemm_ref(&p, x, nt, y) != SPQR_OK) abort();
            if (spqr_qgemm(&p, x, nt, y) != SPQR_OK) abort();
        }
        spqr_packed_free(&p);
    }
    for (int i = 0; i < nsec; i++) free(buf[i]);
    return 0;
}
