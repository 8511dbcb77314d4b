#!/usr/bin/env bash
# How far perplexity moves with the calibration sample alone: quantize the
# same configurations with several --seed values (which calibration windows
# are drawn) and evaluate every text, to tell real differences between
# methods in docs/RESULTS.md from calibration noise.
#
#   scripts/seeds.sh [MODEL]
#
# The 3-bit GPTQ / SpQR pair by default (SEED_SET=all adds the 4-bit pair).
# SEEDS (default "0 1 2"); JOBS quantizations at once (default 1; on a
# many-core machine several run side by side, OMP_NUM_THREADS each);
# EVAL_ARGS adds options to every `spqr eval` (e.g. --gpu); WINDOWS caps the
# windows per text (default 0 = all); RESULTS_OUT (default
# docs/RESULTS_SEEDS.md). Needs a release build in build/ (or SPQR_BIN).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SPQR_SHARED:-../shared}
MODEL=${1:-$SHARED/models/ref-40m}
SPQR=${SPQR_BIN:-./build/spqr}
OUT=${RESULTS_OUT:-docs/RESULTS_SEEDS.md}
SEEDS=${SEEDS:-0 1 2}
JOBS=${JOBS:-1}
WINDOWS=${WINDOWS:-0}
EVAL_ARGS=${EVAL_ARGS:-}
CALIB=$SHARED/data/calib/corpus_calib.txt
TEXTS="corpus_valid.txt wikitext2_test.raw ptb_test.txt c4_sample.utf8"
S=512
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# name | method | options (the same forms as scripts/results.sh)
CONFIGS=(
  "GPTQ w3 g128|gptq|--bits 3 --group-size 128"
  "SpQR w3 b1=32 b2=16 tau=1.5|spqr|--bits 3 --group-size 32 --stat-group-size 16 --stat-bits 3 --outlier-threshold 1.5"
)
# SEED_SET=all adds the 4-bit pair (twice the time)
if [ "${SEED_SET:-}" = all ]; then
  CONFIGS+=(
    "GPTQ w4 g128|gptq|--bits 4 --group-size 128"
    "SpQR w4 b1=64 b2=16 tau=0.2|spqr|--bits 4 --group-size 64 --stat-group-size 16 --stat-bits 3 --outlier-threshold 0.2"
  )
fi

jget() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" | tail -n1; }

quantize_one() { # index seed
  local c=${CONFIGS[$1]} name method opts
  IFS='|' read -r name method opts <<<"$c"
  # shellcheck disable=SC2086
  $SPQR quantize "$MODEL" --method "$method" $opts --calib "$CALIB" --nsamples 128 --seqlen $S --seed "$2" \
    -o "$WORK/q$1_$2.spqr" --json --quiet 2>"$WORK/q$1_$2.err" | tail -n1 >"$WORK/q$1_$2.json"
}

# quantize everything, JOBS at a time
for i in "${!CONFIGS[@]}"; do
  for k in $SEEDS; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    quantize_one "$i" "$k" &
  done
done
wait
for f in "$WORK"/q*.json; do
  [ -s "$f" ] || { echo "quantize failed: $(cat "${f%.json}.err")" >&2; exit 1; }
done

extra=""
[ "$WINDOWS" -gt 0 ] && extra="--max-windows $WINDOWS"
# one line per (config, seed): i seed bits ppl1 ppl2 ppl3 ppl4
for i in "${!CONFIGS[@]}"; do
  for k in $SEEDS; do
    line="$i $k $(jget avg_bits_real <"$WORK/q${i}_$k.json")"
    for t in $TEXTS; do
      # shellcheck disable=SC2086
      p=$($SPQR eval "$WORK/q${i}_$k.spqr" --data "$SHARED/data/eval/$t" --seqlen $S $extra $EVAL_ARGS --json \
        2>/dev/null | tail -n1 | jget ppl)
      line="$line $p"
    done
    echo "$line" | tee -a "$WORK/ppl.txt" >&2
    rm -f "$WORK/q${i}_$k.spqr"
  done
done

{
  echo "# Calibration-seed spread"
  echo
  echo "Produced by \`scripts/seeds.sh\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -m)); do not edit by hand."
  echo
  echo "Model: \`$(basename "$MODEL")\`. Calibration: \`$(basename "$CALIB")\`, 128 windows of $S tokens drawn with"
  echo "\`--seed\` $(echo "$SEEDS" | xargs | sed 's/ /, /g'); everything else as in docs/RESULTS.md. Perplexity at seqlen $S with the"
  echo "REFERENCE.json protocol$( [ "$WINDOWS" -gt 0 ] && echo ", first $WINDOWS windows of each text only")$(case " $EVAL_ARGS " in *" --gpu "*) echo ", evaluated with \`spqr eval --gpu\`" ;; esac)."
  echo "Each cell: mean over the seeds, then (min - max). A difference between two rows smaller than"
  echo "these ranges is within calibration noise."
  echo
  echo "| method | file bits | corpus_valid | wikitext2 | ptb | c4 |"
  echo "|---|---|---|---|---|---|"
  for i in "${!CONFIGS[@]}"; do
    name=${CONFIGS[$i]%%|*}
    awk -v i="$i" -v name="$name" '
      $1 == i { n++; b = $3; for (c = 4; c <= 7; c++) { s[c] += $c; if (n == 1 || $c < lo[c]) lo[c] = $c; if (n == 1 || $c > hi[c]) hi[c] = $c } }
      END { printf "| %s | %.3f |", name, b;
            for (c = 4; c <= 7; c++) printf " %.2f (%.2f - %.2f) |", s[c] / n, lo[c], hi[c]; print "" }' "$WORK/ppl.txt"
  done
  echo
  echo "Per seed:"
  echo
  echo "| method | seed | corpus_valid | wikitext2 | ptb | c4 |"
  echo "|---|---|---|---|---|---|"
  while read -r i k _b p1 p2 p3 p4; do
    printf '| %s | %s | %.3f | %.3f | %.3f | %.3f |\n' "${CONFIGS[$i]%%|*}" "$k" "$p1" "$p2" "$p3" "$p4"
  done <"$WORK/ppl.txt"
} >"$WORK/table.md"
cp "$WORK/table.md" "$OUT"
cat "$OUT" >&2
echo "wrote $OUT" >&2
