#!/bin/sh
# build_standalone.sh - build test_cuda and bench_cuda without CMake: nvcc for
# the .cu files of this folder, the C compiler for gpu_layout.c, the few
# library files they need (util/status.c, util/numfmt.c, formats/spqr/qlayer.c) and
# the test/bench sources. Needs no BLAS, cJSON or xxhash; the test needs
# cmocka (CMOCKA_DIR=prefix if not in /usr).
#   src/formats/spqr/cuda/build_standalone.sh [outdir]   (default build-cuda-sa)
# SPQR_CUDA_GENCODE overrides the targets (default: sm_90 SASS + compute_80 PTX).
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../../.." && pwd)
OUT=${1:-$ROOT/build-cuda-sa}
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
CC=${CC:-gcc}
GENCODE=${SPQR_CUDA_GENCODE:-"-gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=compute_80"}
CMOCKA_INC=; CMOCKA_LIB=
if [ -n "$CMOCKA_DIR" ]; then CMOCKA_INC="-I$CMOCKA_DIR/include"; CMOCKA_LIB="-L$CMOCKA_DIR/lib"; fi
mkdir -p "$OUT"
CFLAGS="-std=c11 -O2 -fopenmp -Wall -Wextra -Wshadow -Wno-unused-parameter -Wvla -Werror -D_GNU_SOURCE -DSPQR_HAVE_CUDA=1 -I$ROOT/include -I$ROOT/src -I$ROOT/tests $CMOCKA_INC"
# every .cu is rebuilt when it or any header of this folder is newer than its object
CUOBJ=
for cu in "$HERE"/*.cu; do
    o="$OUT/$(basename "$cu" .cu).cu.o"
    CUOBJ="$CUOBJ $o"
    stale=0
    for dep in "$cu" "$HERE"/*.h "$HERE"/*.cuh; do [ "$o" -nt "$dep" ] || stale=1; done
    if [ $stale = 1 ]; then
        "$NVCC" -std=c++17 -O3 --use_fast_math -lineinfo $GENCODE -I"$ROOT/include" -I"$ROOT/src" \
            -c "$cu" -o "$o" -Xptxas -v > "$o.log" 2>&1 || { grep -v "^ptxas info\|bytes stack\|^$" "$o.log" >&2; exit 1; }
    fi
done
OBJ=
for f in src/formats/spqr/cuda/gpu_layout.c src/util/status.c src/util/numfmt.c src/formats/spqr/qlayer.c; do
    $CC $CFLAGS -c "$ROOT/$f" -o "$OUT/$(basename "$f" .c).o"
    OBJ="$OBJ $OUT/$(basename "$f" .c).o"
done
for f in tests/testutil.c tests/test_cuda.c bench/bench_cuda.c; do
    $CC $CFLAGS -c "$ROOT/$f" -o "$OUT/$(basename "$f" .c).o"
done
"$NVCC" -o "$OUT/test_cuda" "$OUT/test_cuda.o" "$OUT/testutil.o" $CUOBJ $OBJ $CMOCKA_LIB -lcmocka -lcublas -lgomp
"$NVCC" -o "$OUT/bench_cuda" "$OUT/bench_cuda.o" $CUOBJ $OBJ -lcublas -lgomp -lm
echo "built $OUT/test_cuda $OUT/bench_cuda"
