#!/usr/bin/env bash
# Produce docs/RESULTS.md: perplexity of the largest reference model on every
# evaluation text for fp, RTN, GPTQ and SpQR at about 3, 3.5, 4 and 4.6
# average bits, with the real bits per parameter of each .spqr file.
#
#   scripts/results.sh [MODEL] [WINDOWS]
#
# RESULTS_SET=tau runs the outlier-threshold ablation instead (write it with
# RESULTS_OUT=docs/RESULTS_TAU.md).
# WINDOWS (default 0 = all) caps the number of seqlen-512 windows scored per
# text; the table says when a cap was used. EVAL_ARGS adds options to every
# `spqr eval` (e.g. EVAL_ARGS=--gpu on a machine with a CUDA device; the table
# says so). Needs a release build in build/ (or SPQR_BIN).
# Zero-shot columns (`spqr zeroshot`, lm-eval scoring, with BOS) are added for
# the main set; ZEROSHOT=0 leaves them out, ZS_LIMIT=N scores only the first N
# documents of each task (the table says so); `--gpu` in EVAL_ARGS applies to
# them too.
# ROWS_DIR keeps each measured row (one file per configuration; rows already
# there are not measured again), so a long run can be done in parts and
# resumed; use one ROWS_DIR per set of settings. Several runs may share one
# ROWS_DIR at once (each takes the rows no other has started), e.g. two runs
# side by side on a many-core machine; a last run then writes the table.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SPQR_SHARED:-../shared}
MODEL=${1:-$SHARED/models/ref-40m}
WINDOWS=${2:-0}
SPQR=${SPQR_BIN:-./build/spqr}
OUT=${RESULTS_OUT:-docs/RESULTS.md}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ROWS=${ROWS_DIR:-$WORK/rows}
mkdir -p "$ROWS"
CALIB=$SHARED/data/calib/corpus_calib.txt
TEXTS="corpus_valid.txt wikitext2_test.raw ptb_test.txt c4_sample.utf8"
S=512
TAU=${TAU:-0.2}

EVAL_ARGS=${EVAL_ARGS:-}
SET=${RESULTS_SET:-main}   # main: the method comparison; tau: outlier-threshold ablation
# name | method | options
if [ "$SET" = tau ]; then
CONFIGS=(
  "GPTQ w3 b1=b2=16 (bilevel, no outliers)|gptq|--bits 3 --group-size 16 --stat-group-size 16 --stat-bits 3"
  "SpQR w3 b1=b2=16 tau=0 (no outliers)|spqr|--bits 3 --group-size 16 --stat-group-size 16 --stat-bits 3 --outlier-threshold 0"
  "SpQR w3 b1=b2=16 tau=1.0|spqr|--bits 3 --group-size 16 --stat-group-size 16 --stat-bits 3 --outlier-threshold 1.0"
  "SpQR w3 b1=b2=16 tau=0.45|spqr|--bits 3 --group-size 16 --stat-group-size 16 --stat-bits 3 --outlier-threshold 0.45"
  "SpQR w3 b1=b2=16 tau=0.1|spqr|--bits 3 --group-size 16 --stat-group-size 16 --stat-bits 3 --outlier-threshold 0.1"
  "GPTQ w4 b1=b2=16 (bilevel, no outliers)|gptq|--bits 4 --group-size 16 --stat-group-size 16 --stat-bits 3"
  "SpQR w4 b1=b2=16 tau=0.1|spqr|--bits 4 --group-size 16 --stat-group-size 16 --stat-bits 3 --outlier-threshold 0.1"
  "SpQR w4 b1=b2=16 tau=0.45|spqr|--bits 4 --group-size 16 --stat-group-size 16 --stat-bits 3 --outlier-threshold 0.45"
)
else
CONFIGS=(
  "RTN w3 g128|rtn|--bits 3 --group-size 128"
  "GPTQ w3 g128|gptq|--bits 3 --group-size 128"
  "SpQR w3 b1=32 b2=16 tau=1.5|spqr|--bits 3 --group-size 32 --stat-group-size 16 --stat-bits 3 --outlier-threshold 1.5"
  "RTN w3 g64|rtn|--bits 3 --group-size 64"
  "GPTQ w3 g64|gptq|--bits 3 --group-size 64"
  "SpQR w3 b1=32 b2=16 tau=0.5|spqr|--bits 3 --group-size 32 --stat-group-size 16 --stat-bits 3 --outlier-threshold 0.5"
  "RTN w4 g128|rtn|--bits 4 --group-size 128"
  "GPTQ w4 g128|gptq|--bits 4 --group-size 128"
  "SpQR w4 b1=64 b2=16 tau=0.2|spqr|--bits 4 --group-size 64 --stat-group-size 16 --stat-bits 3 --outlier-threshold 0.2"
  "RTN w4 g48|rtn|--bits 4 --group-size 48"
  "GPTQ w4 g48|gptq|--bits 4 --group-size 48"
  "SpQR w4 b1=b2=16 tau=0.2 (near-lossless config)|spqr|--bits 4 --group-size 16 --stat-group-size 16 --stat-bits 3 --outlier-threshold $TAU"
)
fi

ZEROSHOT=${ZEROSHOT:-$([ "$SET" = tau ] && echo 0 || echo 1)}
ZS_LIMIT=${ZS_LIMIT:-0}

# shellcheck source=scripts/results_lib.sh
. scripts/results_lib.sh
FP_PPL=""  # perplexity of the fp model per text, for the relative change

{
  if [ "$SET" = tau ]; then echo "# Ablation: outlier threshold tau and bilevel statistics"; else echo "# Quantization results"; fi
  echo
  echo "Produced by \`scripts/results.sh\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -m)); do not edit by hand."
  echo
  echo "Model: \`$(basename "$MODEL")\`. Calibration: \`$(basename "$CALIB")\`, 128 windows of $S tokens, seed 0."
  echo "Perplexity at seqlen $S with the REFERENCE.json protocol$( [ "$WINDOWS" -gt 0 ] && echo ", first $WINDOWS windows of each text only")."
  where_line
  echo "Bits are per quantized parameter: *formula* = the paper's count, *file* = real bytes in the .spqr file"
  echo "(codes, statistics, outliers, permutation, padding). Parentheses: change of perplexity against fp."
  echo "RTN and GPTQ store an fp16 scale and zero per group (32/g bits); SpQR stores 3-bit scale and zero codes"
  echo "per group of beta1 weights and fp16 second-level statistics per beta2 = 16 rows (bilevel), plus outliers."
  echo
  zs_legend
  echo "| method | formula bits | file bits | outliers | corpus_valid | wikitext2 | ptb | c4 |$(zs_head) quantize s |"
  echo "|---|---|---|---|---|---|---|---|$(zs_rule)---|"
} > "$WORK/table.md"
# key of a row file: the configuration's name with every odd character as _
key_of() { echo "$SET.$1" | tr -c 'A-Za-z0-9.=\n-' '_'; }
if [ ! -s "$ROWS/$(key_of fp)" ]; then
  fprow=$(eval_all "$MODEL")
  fpzs=""
  [ "$SET" = tau ] || fpzs=$(zs_all "$MODEL")
  echo "$fprow" >"$ROWS/$(key_of fp).tmp" && echo "$fpzs" >>"$ROWS/$(key_of fp).tmp"
  mv "$ROWS/$(key_of fp).tmp" "$ROWS/$(key_of fp)"
fi
fprow=$(sed -n 1p "$ROWS/$(key_of fp)"); fpzs=$(sed -n 2p "$ROWS/$(key_of fp)")
FP_PPL=$(echo "$fprow" | tr -d '|' | xargs)
[ "$SET" = tau ] || echo "| fp (bf16 weights, fp32 compute) | 16 | 16 | - |$fprow$fpzs - |" >> "$WORK/table.md"
cat "$WORK/table.md" >&2

for c in "${CONFIGS[@]}"; do
  IFS='|' read -r name method opts <<<"$c"
  row=$ROWS/$(key_of "$name")
  # a row being measured by another run on the same ROWS_DIR is skipped here
  if [ ! -s "$row" ] && mkdir "$row.lock" 2>/dev/null; then
    f="$WORK/q.spqr"
    # shellcheck disable=SC2086
    js=$($SPQR quantize "$MODEL" --method "$method" $opts --calib "$CALIB" --nsamples 128 --seqlen $S -o "$f" --json --quiet | tail -n1)
    fb=$(echo "$js" | jget avg_bits_formula); rb=$(echo "$js" | jget avg_bits_real)
    ol=$(echo "$js" | jget outlier_share); secs=$(echo "$js" | jget seconds)
    echo "| $name | $(printf '%.3f' "$fb") | $(printf '%.3f' "$rb") | $(awk "BEGIN{printf \"%.3f%%\", 100*$ol}") |$(eval_all "$f")$(zs_all "$f") $(printf '%.0f' "$secs") |" >"$row.tmp"
    mv "$row.tmp" "$row"
    rm -f "$f"
    rmdir "$row.lock"
  fi
  if [ -s "$row" ]; then tee -a "$WORK/table.md" <"$row" >&2; else echo "| $name | not measured (being measured by another run) |" | tee -a "$WORK/table.md" >&2; fi
done
cp "$WORK/table.md" "$OUT"
echo "wrote $OUT" >&2
