/* device_layout.cuh - the device view of a layer in the SpQR GPU layout
 * (gpu_layout.h defines the layout and its index helpers): the geometry plus
 * typed section pointers that every kernel receives by value, the statistic
 * configurations the kernels are instantiated for, and the layout constants
 * under the short names the kernels use. */
#ifndef SPQR_CUDA_DEVICE_LAYOUT_CUH
#define SPQR_CUDA_DEVICE_LAYOUT_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "formats/spqr/cuda/gpu_layout.h"

constexpr int TILE_ROWS = SPQR_GPU_TILE_ROWS;  /* rows per tile (one warp)            */
constexpr int HALF_ROWS = SPQR_GPU_HALF_ROWS;  /* rows g and g + 8 of a lane          */
constexpr int WCOLS = SPQR_GPU_WINDOW_COLS;    /* columns per window                  */
constexpr int QCOLS = SPQR_GPU_QUAD_COLS;      /* permuted columns per quad (4 windows) */
constexpr int QTR_COLS = SPQR_GPU_QUARTER_COLS;/* columns of a lane's quarter         */
static_assert(TILE_ROWS == 16 && QTR_COLS == 16, "one mma.m16n8k16 covers a tile and a quarter");
static_assert(QCOLS == 4 * WCOLS && WCOLS == 4 * QTR_COLS, "quad = 4 windows = 16 quarters");

enum { SM_BIL4 = SPQR_GPU_SM_BIL4, SM_F16 = SPQR_GPU_SM_F16 }; /* statistics modes of the fast layout */

/* geometry (spqr_gpu_geom's fields, first) + device section pointers */
struct DevLayer {
    SPQR_GPU_GEOM_FIELDS
    const uint4 *codes;     /* fast: [ntiles][nquads][B][32] uint4          */
    const uint32_t *stats;  /* fast: per (tile, quad): see spqr_gpu_stat_word_index */
    const uint2 *stats2;    /* fast BIL4: [nrb][ng2]                         */
    const uint32_t *ol_off; /* fast: [ntiles * nquads + 1]                   */
    const uint32_t *ol;     /* fast: col-in-quad | row-in-tile << 8 | fp16 << 16 */
    const int32_t *perm;    /* [cols]                                        */
    const uint32_t *orow;   /* fast: row-ordered outliers (batch-T kernel):  */
    const uint32_t *ocol;   /*   CSR offsets [rows + 1], permuted columns,   */
    const uint16_t *oval;   /*   fp16 values                                 */
    const uint8_t *gcodes;  /* generic: [rows][cols]                         */
    const float2 *gstats;   /* generic: [rows][ngroups] (scale, zero)        */
    const uint32_t *grow;   /* generic: outlier CSR row offsets [rows + 1]   */
    const uint32_t *gcol;   /* generic: permuted columns                     */
    const float *gval;      /* generic: values                               */
};

/* DevLayer is a flat struct that begins with spqr_gpu_geom's fields rather
 * than a derived one: so the kernels compile to exactly the machine code they
 * had before the split into files (a base class changes the order of the
 * compiler's parameter loads). geom() views it as the C struct. */
static_assert(offsetof(DevLayer, s2step) == offsetof(spqr_gpu_geom, s2step) &&
                  offsetof(DevLayer, codes) >= sizeof(spqr_gpu_geom),
              "DevLayer starts with the geometry");
__host__ __device__ __forceinline__ const spqr_gpu_geom *geom(const DevLayer &L) {
    return reinterpret_cast<const spqr_gpu_geom *>(&L);
}

/* the statistics a lane reads per quad, by mode and beta1 = 8 (G8) */
template <int SM, bool G8>
struct StatCfg {
    static constexpr int NG = G8 ? 2 : 1;                   /* groups per quarter          */
    static constexpr int SW = (SM == SM_BIL4 ? 2 : 8) * NG; /* stat words / lane / quad     */
    static constexpr int S2 = SM == SM_BIL4 ? 4 * NG : 1;   /* stats2 entries / quarter / quad */
};

__device__ __forceinline__ float h2f(uint32_t bits16) { return spqr_gpu_h2f(bits16); }

#endif /* SPQR_CUDA_DEVICE_LAYOUT_CUH */
