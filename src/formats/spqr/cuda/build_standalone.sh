#!/bin/sh
# build_standalone.sh - build test_cuda and bench_cuda without CMake: nvcc for
# spqr_cuda.cu, the C compiler for the few library files they need
# (util/status.c, util/numfmt.c, quant/qlayer.c) and the test/bench sources. Needs no BLAS,
# cJSON or xxhash; the test needs cmocka (CMOCKA_DIR=prefix if not in /usr).
#   src/kernels/cuda/build_standalone.sh [outdir]      (default build-cuda-sa)
# SPQR_CUDA_GENCODE overrides the targets (default: sm_90 SASS + compute_80 PTX).
set -e
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
OUT=${1:-$ROOT/build-cuda-sa}
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
CC=${CC:-gcc}
NVPID=
GENCODE=${SPQR_CUDA_GENCODE:-"-gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=compute_80"}
CMOCKA_INC=; CMOCKA_LIB=
if [ -n "$CMOCKA_DIR" ]; then CMOCKA_INC="-I$CMOCKA_DIR/include"; CMOCKA_LIB="-L$CMOCKA_DIR/lib"; fi
mkdir -p "$OUT"
CFLAGS="-std=c11 -O2 -fopenmp -Wall -Wextra -Wshadow -Wno-unused-parameter -Wvla -Werror -D_GNU_SOURCE -DSPQR_HAVE_CUDA=1 -I$ROOT/include -I$ROOT/src -I$ROOT/tests $CMOCKA_INC"
CU="$ROOT/src/kernels/cuda/spqr_cuda.cu"
if [ ! "$OUT/spqr_cuda.o" -nt "$CU" ] || [ ! "$OUT/spqr_cuda.o" -nt "$ROOT/src/kernels/cuda/spqr_cuda.h" ]; then
    "$NVCC" -std=c++17 -O3 --use_fast_math -lineinfo $GENCODE -I"$ROOT/include" -I"$ROOT/src" \
        -c "$CU" -o "$OUT/spqr_cuda.o" -Xptxas -v > "$OUT/ptxas.log" 2>&1 &
    NVPID=$!
fi
for f in src/util/status.c src/util/numfmt.c src/quant/qlayer.c tests/testutil.c tests/test_cuda.c bench/bench_cuda.c; do
    $CC $CFLAGS -c "$ROOT/$f" -o "$OUT/$(basename "$f" .c).o"
done
if [ -n "$NVPID" ]; then
    if ! wait "$NVPID"; then grep -v "^ptxas info\|bytes stack\|^$" "$OUT/ptxas.log" >&2; exit 1; fi
fi
"$NVCC" -o "$OUT/test_cuda" "$OUT/test_cuda.o" "$OUT/testutil.o" "$OUT/spqr_cuda.o" "$OUT/status.o" \
    "$OUT/numfmt.o" "$OUT/qlayer.o" $CMOCKA_LIB -lcmocka -lcublas -lgomp
"$NVCC" -o "$OUT/bench_cuda" "$OUT/bench_cuda.o" "$OUT/spqr_cuda.o" "$OUT/status.o" "$OUT/numfmt.o" "$OUT/qlayer.o" -lcublas -lgomp -lm
echo "built $OUT/test_cuda $OUT/bench_cuda"
