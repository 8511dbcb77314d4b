/* features.c - what this build of libspqr contains. */
#include <cblas.h>

#include "common.h"

const char *spqr_build_features(void) {
#ifdef SPQR_HAVE_CUDA
    return "blas=openblas lapack=lapacke simd=scalar,avx2,avx512 openmp=yes cuda=yes";
#else
    return "blas=openblas lapack=lapacke simd=scalar,avx2,avx512 openmp=yes cuda=no";
#endif
}

const char *spqr_blas_core(void) { return openblas_get_corename(); }
