#!/usr/bin/env bash
# The small ablations of docs/ALGORITHM.md section 6: quantize ref-40m with
# SpQR w3 b1=b2=16 tau=0.2 on a reduced calibration set (32 windows of 512
# tokens) with extra quantize options, then evaluate corpus_valid and c4
# (first 100 windows of 512 tokens each). One thread; run one at a time.
#
#   scripts/algo_ablation.sh NAME [extra quantize options...]
#   e.g. scripts/algo_ablation.sh percdamp1 --percdamp 1.0
#
# Appends "NAME | options | formula bits | outlier share | corpus_valid ppl |
# c4 ppl | quantize seconds" to $ABL_OUT (default $TMPDIR/algo_ablation.txt).
# Needs a release build in build/ (or SPQR_BIN); data in ../shared (or
# SPQR_SHARED).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SPQR_SHARED:-../shared}
SPQR=${SPQR_BIN:-./build/spqr}
OUT=${ABL_OUT:-${TMPDIR:-/tmp}/algo_ablation.txt}
NAME=$1
shift
export OMP_NUM_THREADS=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
F=$WORK/q.spqr
js=$($SPQR quantize "$SHARED/models/ref-40m" --method spqr --bits 3 --group-size 16 --stat-group-size 16 \
  --outlier-threshold 0.2 --nsamples 32 --seqlen 512 --calib "$SHARED/data/calib/corpus_calib.txt" \
  "$@" -o "$F" --json --quiet | tail -n1)
jget() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" | tail -n1; }
row="$NAME | $* | $(echo "$js" | jget avg_bits_formula) | $(echo "$js" | jget outlier_share) |"
for t in corpus_valid.txt c4_sample.utf8; do
  p=$($SPQR eval "$F" --data "$SHARED/data/eval/$t" --seqlen 512 --max-windows 100 --json 2>/dev/null | tail -n1 | jget ppl)
  row="$row $p |"
done
row="$row $(echo "$js" | jget seconds)"
echo "$row" | tee -a "$OUT"
