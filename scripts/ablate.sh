#!/usr/bin/env bash
# Ablation studies with cached cells: quantize a set of configurations with
# several calibration seeds, measure every one (file bits, outliers,
# perplexity change against fp on the four evaluation texts, zero-shot
# accuracy with its standard error) and write the study's section of
# docs/ABLATIONS.md with plots (gnuplot, pngcairo) in docs/ablations/.
#
#   scripts/ablate.sh STUDY [MODEL]      STUDY: tau statq groups cluscomp pareto
#
#   tau       SpQR w3 / w4, beta1 = beta2 = 16, stat bits 3, tau 0.1 .. 0.5
#   statq     --stat-quantizer minmax|uniform|kmeans x stat bits 2,3,4 at w3 / w4
#             (cells are "not available in this build" when the binary lacks it)
#   groups    beta1 8..128 x beta2 16, 32, fp16 statistics (0) at w3, tau 0.2
#   cluscomp  ClusComp {kmeans,hierarchical,gmm} x n {1000,5000,10000} x d {4,8,16}
#             x tune {none,layer}
#   pareto    perplexity change against file bits of every cached cell measured
#             with the same settings, plus RTN / GPTQ / SpQR reference cells
#
# One cell = one configuration x one calibration seed. Each measured cell is a
# plain-text file CACHE_DIR/<md5 of its key>.cell (key=value lines, the full key
# on its "key=" line): the key holds the method and its options, the seed, the
# model (folder/file name), calibration file, NSAMPLES, seqlen, WINDOWS, the
# zero-shot setting and EVAL_ARGS. Cells already in the cache are not run
# again, so an interrupted or extended study resumes; cells measured elsewhere
# (same settings) can be copied into CACHE_DIR and assembled.
#
# Environment:
#   CACHE_DIR      cell cache (.ablate-cache)
#   JOBS           cells measured side by side (1); THREADS = OMP threads per
#                  job (nproc / JOBS)
#   NSAMPLES       calibration windows of 512 tokens (128)
#   SEEDS          calibration seeds per configuration ("0 1 2")
#   WINDOWS        max perplexity windows per text, 0 = all (0)
#   ZEROSHOT       1 = zero-shot accuracy per cell, 0 = none (1)
#   ZS_LIMIT       zero-shot documents per task, 0 = all (0)
#   EVAL_ARGS      extra options of spqr eval (e.g. --gpu; --gpu also for zeroshot)
#   ONLY           extended regex on "LABEL seed=K" of the cells to measure
#                  (e.g. ONLY='w3' or ONLY='seed=0$'); the document still lists
#                  every cell of the study (missing ones as "not measured"); the
#                  fp cell (the unquantized model, the reference) is always measured
#                  when it is not in the cache
#   ASSEMBLE_ONLY  1 = measure nothing, write the section from the cache only
#   ABLATE_OUT     document (docs/ABLATIONS.md); plots go to
#                  $(dirname ABLATE_OUT)/ablations/STUDY*.png
#   GNUPLOT        gnuplot command (gnuplot); without one that has the pngcairo
#                  terminal the plots are skipped with a note in the section
#   SPQR_BIN       spqr binary (./build/spqr); SPQR_SHARED data folder (../shared)
# Relative paths (CACHE_DIR, ABLATE_OUT, SPQR_BIN) are taken from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
STUDY=${1:-}
case "$STUDY" in
  tau | statq | groups | cluscomp | pareto) ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d;s/^# \{0,1\}//' >&2; exit 2 ;;
esac
SHARED=${SPQR_SHARED:-../shared}
MODEL=${2:-$SHARED/models/ref-40m}
SPQR=${SPQR_BIN:-./build/spqr}
ncores() { env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc; } # nproc itself honours OMP_NUM_THREADS
CACHE_DIR=${CACHE_DIR:-.ablate-cache}
JOBS=${JOBS:-1}
THREADS=${THREADS:-$(($(ncores) / JOBS > 0 ? $(ncores) / JOBS : 1))}
NSAMPLES=${NSAMPLES:-128}
SEEDS=${SEEDS:-0 1 2}
WINDOWS=${WINDOWS:-0}
ZEROSHOT=${ZEROSHOT:-1}
ZS_LIMIT=${ZS_LIMIT:-0}
EVAL_ARGS=${EVAL_ARGS:-}
ONLY=${ONLY:-}
ASSEMBLE_ONLY=${ASSEMBLE_ONLY:-0}
OUT=${ABLATE_OUT:-docs/ABLATIONS.md}
PLOT_DIR=$(dirname "$OUT")/ablations
CALIB=$SHARED/data/calib/corpus_calib.txt
TEXTS="corpus_valid.txt wikitext2_test.raw ptb_test.txt c4_sample.utf8"
TASKS="arc_easy arc_challenge piqa hellaswag winogrande lambada_openai"
S=512
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$CACHE_DIR"
EVAL_ARGS=$(echo "$EVAL_ARGS" | xargs)
SEEDS=$(echo "$SEEDS" | xargs)

gpu_requested() { case " $EVAL_ARGS " in *" --gpu "*) return 0 ;; esac; return 1; }
jget() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" | tail -n1; }
cval() { sed -n "s/^$2=//p" "$1" | head -n1; } # cell file, field -> value

# ---- the study's configurations: id|label|method|options|group|x|y ----------
# group: cells compared with each other (and one plot series); x, y: the
# study's axes for plots (numbers or names).
CONFIGS=()
NEED_OPT=""   # an option the binary must know for this study's cells
case "$STUDY" in
  tau)
    for w in 3 4; do for t in 0.1 0.2 0.3 0.4 0.5; do
      CONFIGS+=("tau-w$w-$t|SpQR w$w b1=b2=16 tau=$t|spqr|--bits $w --group-size 16 --stat-group-size 16 --stat-bits 3 --outlier-threshold $t|w$w|$t|")
    done; done ;;
  statq)
    NEED_OPT=--stat-quantizer
    for w in 3 4; do for q in minmax uniform kmeans; do for sb in 2 3 4; do
      CONFIGS+=("statq-w$w-$q-$sb|SpQR w$w b1=b2=16 tau=0.2 $q s$sb|spqr|--bits $w --group-size 16 --stat-group-size 16 --stat-bits $sb --stat-quantizer $q --outlier-threshold 0.2|w$w|$sb|$q")
    done; done; done ;;
  groups)
    for b1 in 8 16 32 64 128; do for b2 in 16 32 0; do
      n2=$b2; [ "$b2" = 0 ] && n2=fp16
      CONFIGS+=("groups-$b1-$b2|SpQR w3 b1=$b1 b2=$n2 tau=0.2|spqr|--bits 3 --group-size $b1 --stat-group-size $b2 --stat-bits 3 --outlier-threshold 0.2|w3|$b1|$n2")
    done; done ;;
  cluscomp)
    for a in kmeans hierarchical gmm; do for tu in none layer; do for n in 1000 5000 10000; do for d in 4 8 16; do
      CONFIGS+=("cc-$a-$tu-$n-$d|ClusComp $a tune=$tu n=$n d=$d|cluscomp|--cluster-algo $a --clusters $n --cluster-dim $d --tune $tu|$a tune=$tu|$n|$d")
    done; done; done; done ;;
  pareto) # reference cells: the configurations of docs/RESULTS.md
    CONFIGS=(
      "ref-rtn-w3g128|RTN w3 g128|rtn|--bits 3 --group-size 128|RTN||"
      "ref-gptq-w3g128|GPTQ w3 g128|gptq|--bits 3 --group-size 128|GPTQ||"
      "ref-rtn-w4g128|RTN w4 g128|rtn|--bits 4 --group-size 128|RTN||"
      "ref-gptq-w4g128|GPTQ w4 g128|gptq|--bits 4 --group-size 128|GPTQ||"
      "ref-rtn-w4g48|RTN w4 g48|rtn|--bits 4 --group-size 48|RTN||"
      "ref-gptq-w4g48|GPTQ w4 g48|gptq|--bits 4 --group-size 48|GPTQ||"
      "ref-spqr-w3b32|SpQR w3 b1=32 b2=16 tau=0.5|spqr|--bits 3 --group-size 32 --stat-group-size 16 --stat-bits 3 --outlier-threshold 0.5|SpQR||"
      "ref-spqr-w4b64|SpQR w4 b1=64 b2=16 tau=0.2|spqr|--bits 4 --group-size 64 --stat-group-size 16 --stat-bits 3 --outlier-threshold 0.2|SpQR||"
      "ref-spqr-w4b16|SpQR w4 b1=b2=16 tau=0.2|spqr|--bits 4 --group-size 16 --stat-group-size 16 --stat-bits 3 --outlier-threshold 0.2|SpQR||"
    ) ;;
esac

# ---- cache keys ---------------------------------------------------------------
ZSKEY=off
[ "$ZEROSHOT" = 1 ] && ZSKEY="limit$ZS_LIMIT"
EVALKEY="model=$(basename "$MODEL") seqlen=$S windows=$WINDOWS zeroshot=$ZSKEY eval=[$EVAL_ARGS]"
SETTINGS="$EVALKEY calib=$(basename "$CALIB") nsamples=$NSAMPLES"
cell_key() { # method options seed -> key
  if [ "$1" = fp ]; then echo "method=fp $EVALKEY"; else echo "method=$1 opts=[$(echo "$2" | xargs)] seed=$3 $SETTINGS"; fi
}
cell_file() { echo "$CACHE_DIR/$(printf '%s' "$1" | md5sum | cut -c1-20).cell"; }

HAVE_OPT=1
if [ -n "$NEED_OPT" ]; then
  qhelp=$("$SPQR" quantize --help 2>&1 || true)
  case "$qhelp" in *"$NEED_OPT"*) ;; *) HAVE_OPT=0 ;; esac
fi

machine_line() {
  local m g
  m="$(ncores) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
  if gpu_requested; then
    g=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 || true)
    m="$m, GPU ${g:-none found (CPU fallback)}"
  fi
  echo "$m"
}

# ---- measuring one cell ----------------------------------------------------------
measure() { # label method options seed -> writes the cell file (atomically)
  local label=$1 method=$2 opts=$3 seed=$4 key file tmp f t0 js ppl extra="" zx="" rc=0
  key=$(cell_key "$method" "$opts" "$seed"); file=$(cell_file "$key")
  tmp="$WORK/$(basename "$file").tmp"; f="$WORK/$(basename "$file" .cell).spqr"
  t0=$(date +%s.%N)
  {
    echo "# spqr ablate cell v1 (scripts/ablate.sh)"
    echo "key=$key"
    echo "label=$label"
    echo "config=method=$method opts=[$(echo "$opts" | xargs)]"
    echo "settings=$([ "$method" = fp ] && echo "$EVALKEY" || echo "$SETTINGS")"
    echo "seed=$seed"
    echo "machine=$(machine_line)"
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "spqr_version=$("$SPQR" version 2>/dev/null | head -n1)"
  } >"$tmp"
  if [ "$method" = fp ]; then
    f=$MODEL
    { echo "formula_bits=16"; echo "file_bits=16"; echo "outlier_share=0"; echo "quant_seconds=0"; } >>"$tmp"
  else
    # shellcheck disable=SC2086
    js=$(OMP_NUM_THREADS=$THREADS "$SPQR" quantize "$MODEL" --method "$method" $opts --calib "$CALIB" \
      --nsamples "$NSAMPLES" --seqlen $S --seed "$seed" -o "$f" --json --quiet 2>"$tmp.err" | tail -n1) || rc=$?
    if [ "$rc" != 0 ] || [ -z "$js" ]; then
      echo "ablate: quantize failed for '$label' seed $seed: $(tail -n2 "$tmp.err")" >&2
      rm -f "$f"; return 1
    fi
    {
      echo "formula_bits=$(echo "$js" | jget avg_bits_formula)"
      echo "file_bits=$(echo "$js" | jget avg_bits_real)"
      echo "outlier_share=$(echo "$js" | jget outlier_share)"
      echo "quant_seconds=$(echo "$js" | jget seconds)"
      echo "quant_json=$js"
    } >>"$tmp"
  fi
  [ "$WINDOWS" -gt 0 ] && extra="--max-windows $WINDOWS"
  for t in $TEXTS; do
    # shellcheck disable=SC2086
    ppl=$(OMP_NUM_THREADS=$THREADS "$SPQR" eval "$f" --data "$SHARED/data/eval/$t" --seqlen $S $extra $EVAL_ARGS --json \
      2>/dev/null | tail -n1 | jget ppl || true)
    if [ -z "$ppl" ]; then echo "ablate: eval failed for '$label' seed $seed on $t" >&2; rm -f "$f" "$tmp"; return 1; fi
    echo "ppl_${t%%.*}=$ppl" >>"$tmp"
  done
  if [ "$ZEROSHOT" = 1 ]; then
    [ "$ZS_LIMIT" -gt 0 ] && zx="--limit $ZS_LIMIT"
    gpu_requested && zx="$zx --gpu"
    # shellcheck disable=SC2086
    js=$(OMP_NUM_THREADS=$THREADS "$SPQR" zeroshot "$f" $zx --json 2>/dev/null | tail -n1 || true)
    if [ -z "$js" ]; then echo "ablate: zeroshot failed for '$label' seed $seed" >&2; rm -f "$f" "$tmp"; return 1; fi
    echo "zs_mean=$(echo "$js" | jget mean_acc)" >>"$tmp"
    for task in $TASKS; do
      local tj
      tj=$(echo "$js" | sed -n "s/.*\"$task\":{\([^}]*\)}.*/\1/p")
      for m in acc acc_stderr acc_norm acc_norm_stderr ppl n; do
        local v
        v=$(echo "$tj" | sed -n "s/.*\"$m\":\([^,}]*\).*/\1/p")
        [ -n "$v" ] && echo "zs_${task}_$m=$v" >>"$tmp"
      done
    done
  fi
  [ "$method" = fp ] || rm -f "$f"
  echo "wall_seconds=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')" >>"$tmp"
  echo "complete=1" >>"$tmp"
  mv "$tmp" "$file"
  echo "ablate: measured '$label' seed $seed -> $file" >&2
}

# ---- run what is missing ------------------------------------------------------------
FAILED=0
if [ "$ASSEMBLE_ONLY" != 1 ]; then
  [ -x "$SPQR" ] || { echo "ablate: no spqr binary at $SPQR (make, or set SPQR_BIN)" >&2; exit 1; }
  fpkey=$(cell_key fp "" "")
  [ -s "$(cell_file "$fpkey")" ] || measure "fp" fp "" "" || FAILED=$((FAILED + 1))
  [ "$HAVE_OPT" = 1 ] || echo "ablate: $SPQR does not know $NEED_OPT: the $STUDY cells are not available in this build" >&2
  todo=()
  for c in "${CONFIGS[@]}"; do
    IFS='|' read -r _id label method opts _g _x _y <<<"$c"
    [ "$HAVE_OPT" = 1 ] || continue
    for k in $SEEDS; do
      [ -s "$(cell_file "$(cell_key "$method" "$opts" "$k")")" ] && continue
      if [ -n "$ONLY" ] && ! echo "$label seed=$k" | grep -Eq -- "$ONLY"; then continue; fi
      todo+=("$label|$method|$opts|$k")
    done
  done
  echo "ablate: $STUDY: ${#todo[@]} cells to measure ($JOBS at a time, $THREADS threads each)" >&2
  for t in ${todo[@]+"${todo[@]}"}; do
    IFS='|' read -r label method opts k <<<"$t"
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    measure "$label" "$method" "$opts" "$k" &
  done
  wait || true
  for t in ${todo[@]+"${todo[@]}"}; do # a cell without its file failed
    IFS="|" read -r _l method opts k <<<"$t"
    [ -s "$(cell_file "$(cell_key "$method" "$opts" "$k")")" ] || FAILED=$((FAILED + 1))
  done
fi

# ---- summarize: one line per configuration from its cells -----------------------------
# For pareto: every cached cell with the same settings joins as a configuration.
if [ "$STUDY" = pareto ]; then
  declare -A seen=()
  for c in "${CONFIGS[@]}"; do
    IFS='|' read -r _id _l method opts _g _x _y <<<"$c"
    seen["method=$method opts=[$(echo "$opts" | xargs)]"]=1
  done
  for f in "$CACHE_DIR"/*.cell; do
    [ -e "$f" ] || continue
    [ "$(cval "$f" settings)" = "$SETTINGS" ] || continue
    cfg=$(cval "$f" config); [ -z "${seen[$cfg]:-}" ] || continue
    seen["$cfg"]=1
    method=$(echo "$cfg" | sed -n 's/^method=\([^ ]*\) .*/\1/p')
    opts=$(echo "$cfg" | sed -n 's/.*opts=\[\(.*\)\]$/\1/p')
    fam=$(echo "$method" | sed 's/rtn/RTN/;s/gptq/GPTQ/;s/spqr/SpQR/;s/cluscomp/ClusComp/')
    echo "cached|$(cval "$f" label)|$method|$opts|$fam||" >>"$WORK/cached.lst"
  done
  if [ -s "$WORK/cached.lst" ]; then # sorted by family, then label
    while IFS= read -r l; do CONFIGS+=("$l"); done < <(sort -t"|" -k5,5 -k2,2V "$WORK/cached.lst")
  fi
fi

fpfile=$(cell_file "$(cell_key fp "" "")")
: >"$WORK/cells.lst"
for i in "${!CONFIGS[@]}"; do
  IFS='|' read -r _id _l method opts _g _x _y <<<"${CONFIGS[$i]}"
  for k in $SEEDS; do
    f=$(cell_file "$(cell_key "$method" "$opts" "$k")")
    [ -s "$f" ] && echo "$i $f" >>"$WORK/cells.lst"
  done
done
# summary.tsv: i n fbits rbits ol olo ohi [dm dlo dhi]x4 zsm zsse [acc se]x6 lambada_ppl qsec wall
summarize() {
  local args=()
  while read -r i f; do args+=("cid=$i" "$f"); done <"$WORK/cells.lst"
  [ -s "$fpfile" ] && args=("cid=fp" "$fpfile" ${args[@]+"${args[@]}"})
  [ ${#args[@]} -gt 0 ] || return 0
  awk -v texts="$TEXTS" -v tasks="$TASKS" '
    BEGIN { nt = split(texts, T, " "); for (j = 1; j <= nt; j++) sub(/\..*/, "", T[j]); nk = split(tasks, K, " ")
            # the metric of the paper mean: acc_norm for ARC-c and HellaSwag
            for (j = 1; j <= nk; j++) M[j] = (K[j] == "arc_challenge" || K[j] == "hellaswag") ? "acc_norm" : "acc" }
    FNR == 1 { if (!(cid in N)) { order[++no] = cid } N[cid]++ }
    { p = index($0, "="); if (p == 0) next; V[cid, N[cid], substr($0, 1, p - 1)] = substr($0, p + 1) }
    function agg(c, f, mode,   s, j, v, n) { n = N[c]; s = 0; lo = 1e300; hi = -1e300
      for (j = 1; j <= n; j++) { v = V[c, j, f]; if (v == "") return "nan"; v += 0; s += v; if (v < lo) lo = v; if (v > hi) hi = v }
      return s / n }
    function rel(c, t,   j, v, n, s, r, fp) { n = N[c]; s = 0; dlo = 1e300; dhi = -1e300; fp = V["fp", 1, "ppl_" t]
      if (fp == "") { dlo = dhi = "nan"; return "nan" }
      for (j = 1; j <= n; j++) { v = V[c, j, "ppl_" t]; r = 100 * (v / fp - 1); s += r; if (r < dlo) dlo = r; if (r > dhi) dhi = r }
      return s / n }
    END { for (o = 1; o <= no; o++) { c = order[o]; line = c "\t" N[c]
        line = line "\t" agg(c, "formula_bits") "\t" agg(c, "file_bits")
        m = agg(c, "outlier_share"); line = line "\t" 100 * m "\t" 100 * lo "\t" 100 * hi
        for (j = 1; j <= nt; j++) { m = rel(c, T[j]); line = line "\t" m "\t" dlo "\t" dhi }
        m = agg(c, "zs_mean"); se = 0; nse = 0
        tl = ""
        for (j = 1; j <= nk; j++) { a = agg(c, "zs_" K[j] "_" M[j]); e = agg(c, "zs_" K[j] "_" M[j] "_stderr")
          tl = tl "\t" (a == "nan" ? a : 100 * a) "\t" (e == "nan" ? e : 100 * e)
          if (K[j] != "lambada_openai" && e != "nan") { se += e * e; nse++ } }
        # stderr of the five-task mean (tasks independent): sqrt(sum se^2) / 5
        line = line "\t" (m == "nan" ? m : 100 * m) "\t" (nse ? 100 * sqrt(se) / nse : "nan") tl
        line = line "\t" agg(c, "zs_lambada_openai_ppl") "\t" agg(c, "quant_seconds")
        w = 0; for (j = 1; j <= N[c]; j++) w += V[c, j, "wall_seconds"]; line = line "\t" w
        print line } }' "${args[@]}"
}
summarize >"$WORK/summary.tsv"
# machines the cells ran on
machines=$( { [ -s "$fpfile" ] && cval "$fpfile" machine; while read -r _i f; do cval "$f" machine; done <"$WORK/cells.lst"; } |
  sort | uniq -c | awk '{ n = $1; $1 = ""; sub(/^ /, ""); printf "%s%s (%d cell%s)", (NR > 1 ? "; " : ""), $0, n, (n == 1 ? "" : "s") }')
versions=$( { while read -r _i f; do cval "$f" spqr_version; done <"$WORK/cells.lst"; } | sort -u | paste -sd ';' - | sed 's/;/; /g')

# ---- tables ------------------------------------------------------------------------
# configs.tsv: i id label group x y
for i in "${!CONFIGS[@]}"; do
  IFS='|' read -r id label _m _o g x y <<<"${CONFIGS[$i]}"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$i" "$id" "$label" "$g" "$x" "$y"
done >"$WORK/configs.tsv"

# joined.tsv: configs.tsv fields, then the summary fields (from n on; "-" when not measured)
awk -F'\t' -v OFS='\t' 'FILENAME == ARGV[1] { s[$1] = $0; next }
  { if ($1 in s) { n = split(s[$1], a, "\t"); l = ""; for (j = 2; j <= n; j++) l = l OFS a[j]; print $0 l } else print $0, 0 }' \
  "$WORK/summary.tsv" "$WORK/configs.tsv" >"$WORK/joined.tsv"
# fields of joined.tsv: 1 i 2 id 3 label 4 group 5 x 6 y 7 n 8 fbits 9 rbits 10 ol 11 olo 12 ohi
# 13-15 corpus_valid m/lo/hi, 16-18 wikitext2, 19-21 ptb, 22-24 c4, 25 zs mean 26 zs se,
# 27..38 per task acc/se, 39 lambada ppl, 40 quant s, 41 wall s
fpline=$(awk -F'\t' -v OFS='\t' '$1 == "fp" { $1 = "fp\tfp\tfp (no quantization)\t\t\t"; print }' "$WORK/summary.tsv") # in the joined.tsv layout

# best per group by mean corpus_valid change; marks where seed ranges do not overlap the best's
awk -F'\t' -v OFS='\t' -v fp="$fpline" -v fpp="$(for t in $TEXTS; do [ -s "$fpfile" ] && cval "$fpfile" "ppl_${t%%.*}"; done | xargs)" \
  -v na="$([ "$HAVE_OPT" = 1 ] && echo "not measured" || echo "not available in this build")" '
  function f2(v) { return (v == "nan" || v == "") ? "-" : sprintf("%+.2f", v) }
  function rng(m, lo, hi) { return f2(m) (lo == hi ? "" : " (" f2(lo) " .. " f2(hi) ")") }
  function zcells(a,   zs, t, j) { zs = "-"
    if (a[25] != "nan" && a[25] != "") { zs = sprintf("%.2f ± %.2f", a[25], a[26])
      if (a[1] != "fp" && F[25] != "" && F[25] != "nan" && (a[25] - F[25]) ^ 2 > 4 * (a[26] ^ 2 + F[26] ^ 2)) zs = zs " ‡" }
    t = ""; for (j = 27; j <= 37; j += 2) t = t ((a[j] == "nan" || a[j] == "") ? " - |" : sprintf(" %.1f ± %.1f |", a[j], a[j + 1]))
    return " " zs " |" t }
  BEGIN { nf = split(fp, F, "\t"); np = split(fpp, P, " ") }
  { L[NR] = $0; if ($7 > 0 && (!($4 in best) || $13 < B13[$4])) { best[$4] = NR; B13[$4] = $13 }
    if ($7 > 0 && (!($4 in bc4) || $22 < C4[$4])) { bc4[$4] = NR; C4[$4] = $22 } }
  END {
    if (nf > 0) printf "| %s | - | 16 | 16 | - | ppl %.3f | ppl %.3f | ppl %.3f | ppl %.3f |%s - |\n", F[3], P[1], P[2], P[3], P[4], zcells(F)
    for (r = 1; r <= NR; r++) { split(L[r], a, "\t"); g = a[4]
      if (a[7] == 0) { printf "| %s | %s |\n", a[3], na; continue }
      split(L[best[g]], b, "\t"); split(L[bc4[g]], c, "\t")
      m1 = ""; m4 = ""
      if (r == best[g]) m1 = " **best**"; else if (a[14] > b[15] || a[15] < b[14]) m1 = " †"
      if (r == bc4[g]) m4 = " **best**"; else if (a[23] > c[24] || a[24] < c[23]) m4 = " †"
      printf "| %s | %d | %.3f | %.3f | %.3f%% | %s%s | %s | %s | %s%s |%s %.0f |\n", a[3], a[7], a[8], a[9], a[10],
        rng(a[13], a[14], a[15]), m1, rng(a[16], a[17], a[18]), rng(a[19], a[20], a[21]), rng(a[22], a[23], a[24]), m4, zcells(a), a[40] } }' \
  "$WORK/joined.tsv" >"$WORK/rows.md"

# conclusion per group, computed from the numbers
awk -F'\t' -v seeds="$(echo "$SEEDS" | wc -w)" '
  { if ($7 == 0) next; g = $4; if (!(g in bi)) order[++ng] = g
    i = ++cnt[g]; lab[g, i] = $3; m[g, i] = $13; lo[g, i] = $14; hi[g, i] = $15; c4[g, i] = $22; c4lo[g, i] = $23; c4hi[g, i] = $24
    nn[g, i] = $7; if (!(g in bi) || $13 < m[g, bi[g]]) bi[g] = i
    if (!(g in ci) || $22 < c4[g, ci[g]]) ci[g] = i }
  END { for (o = 1; o <= ng; o++) { g = order[o]; b = bi[g]; within = ""; outside = ""; single = 0
      for (i = 1; i <= cnt[g]; i++) { if (nn[g, i] < 2) single = 1; if (i == b) continue
        if (lo[g, i] > hi[g, b] || hi[g, i] < lo[g, b]) outside = outside (outside ? ", " : "") lab[g, i]
        else within = within (within ? ", " : "") lab[g, i] }
      printf "- **%s**: best by mean corpus_valid change: %s (%+.2f%%, seeds %+.2f .. %+.2f); by mean c4 change: %s (%+.2f%%).", g, lab[g, b], m[g, b], lo[g, b], hi[g, b], lab[g, ci[g]], c4[g, ci[g]]
      if (cnt[g] > 1) printf " Seed ranges on corpus_valid overlapping the best (not distinguishable): %s; outside the spread: %s.", (within ? within : "none"), (outside ? outside : "none")
      if (single) printf " Some cells have a single seed: no spread, their differences are untested."
      printf "\n" } }' "$WORK/joined.tsv" >"$WORK/conclusion.md"

# ---- plots ----------------------------------------------------------------------------
mkdir -p "$PLOT_DIR"
PLOT_DIR=$(cd "$PLOT_DIR" && pwd) # absolute: gnuplot runs in $WORK
PLOTS=()
GP=""
GNUPLOT=${GNUPLOT:-gnuplot}
command -v "$GNUPLOT" >/dev/null 2>&1 && "$GNUPLOT" -e 'set terminal pngcairo' >/dev/null 2>&1 && GP=$GNUPLOT
plot() { # name title script-body (data in $WORK)
  local png="$PLOT_DIR/$1.png"
  { echo "set terminal pngcairo size 800,500 font ',10' noenhanced"; echo "set offsets graph 0.05, graph 0.05, graph 0.05, graph 0.05"; echo "set output '$png'"; echo "set title \"$2\""; echo "$3"; } >"$WORK/$1.gp"
  if (cd "$WORK" && "$GP" "$1.gp") 2>"$WORK/$1.err"; then PLOTS+=("$1|$2"); else echo "ablate: plot $1 failed: $(head -n3 "$WORK/$1.err")" >&2; fi
}
# per-group data: x y lo hi columns for a metric (field numbers of joined.tsv)
series() { # group mfield lofield hifield file
  awk -F'\t' -v g="$1" -v m="$2" -v l="$3" -v h="$4" '$4 == g && $7 > 0 && $(m) != "nan" { print $5, $(m), $(l), $(h) }' "$WORK/joined.tsv" | sort -g >"$WORK/$5"
}
groups_of() { awk -F'\t' '$7 > 0 { print $4 }' "$WORK/joined.tsv" | awk '!s[$0]++'; }
heat() { # name title filter-group xlabel ylabel field
  awk -F'\t' -v g="$3" -v f="$6" -v out="$WORK/$1.dat" '$4 == g && $7 > 0 {
      if (!($5 in xi)) { xi[$5] = nx++; xs[nx] = $5 } if (!($6 in yi)) { yi[$6] = ny++; ys[ny] = $6 }
      print xi[$5], yi[$6], $(f) > out }
    END { printf "set xtics ("; for (i = 1; i <= nx; i++) printf "%s\"%s\" %d", (i > 1 ? ", " : ""), xs[i], i - 1; print ")"
          printf "set ytics ("; for (i = 1; i <= ny; i++) printf "%s\"%s\" %d", (i > 1 ? ", " : ""), ys[i], i - 1; print ")" }' \
    "$WORK/joined.tsv" >"$WORK/$1.tics"
  [ -s "$WORK/$1.dat" ] || return 0
  plot "$1" "$2" "$(cat "$WORK/$1.tics")
set xlabel '$4'; set ylabel '$5'; set cblabel 'perplexity change vs fp (%)'
set palette defined (0 '#1a9850', 1 '#ffffbf', 2 '#d73027'); unset key; set view map
set offsets 0.5, 0.5, 0.5, 0.5
plot '$1.dat' using 1:2:3 with points pt 5 ps 9 lc palette, '$1.dat' using 1:2:(sprintf('%+.2f', \$3)) with labels font ',9'"
}
if [ -n "$GP" ] && [ -s "$WORK/cells.lst" ]; then
  case "$STUDY" in
    tau)
      pl=""; pp=""
      for g in $(groups_of); do
        series "$g" 10 11 12 "tau_ol_$g.dat"; series "$g" 13 14 15 "tau_cv_$g.dat"; series "$g" 22 23 24 "tau_c4_$g.dat"
        pl="$pl${pl:+, }'tau_ol_$g.dat' using 1:2:3:4 with yerrorlines title '$g'"
        pp="$pp${pp:+, }'tau_cv_$g.dat' using 1:2:3:4 with yerrorlines title '$g corpus_valid', 'tau_c4_$g.dat' using 1:2:3:4 with yerrorlines dt 2 title '$g c4'"
      done
      plot tau_outliers "SpQR: outlier threshold tau vs outlier share" "set xlabel 'tau'; set ylabel 'outliers (% of weights)'; set key top right; set grid
plot $pl"
      plot tau_ppl "SpQR: outlier threshold tau vs perplexity change (mean, seed min-max)" "set xlabel 'tau'; set ylabel 'perplexity change vs fp (%)'; set key outside right; set grid
plot $pp" ;;
    statq)
      for g in $(groups_of); do
        pp=""
        for q in minmax uniform kmeans; do
          awk -F'\t' -v g="$g" -v q="$q" '$4 == g && $6 == q && $7 > 0 { print $5, $13, $14, $15, $22, $23, $24 }' "$WORK/joined.tsv" | sort -g >"$WORK/statq_${g}_$q.dat"
          [ -s "$WORK/statq_${g}_$q.dat" ] || continue
          pp="$pp${pp:+, }'statq_${g}_$q.dat' using 1:2:3:4 with yerrorlines title '$q corpus_valid', '' using 1:5:6:7 with yerrorlines dt 2 title '$q c4'"
        done
        [ -n "$pp" ] && plot "statq_$g" "SpQR $g: statistic quantizer x stat bits" "set xlabel 'stat bits'; set ylabel 'perplexity change vs fp (%)'; set xtics 1; set key outside right; set grid
plot $pp"
      done ;;
    groups) heat groups_w3 "SpQR w3 tau=0.2: corpus_valid perplexity change (%)" w3 "beta1" "beta2" 13
            heat groups_w3_c4 "SpQR w3 tau=0.2: c4 perplexity change (%)" w3 "beta1" "beta2" 22 ;;
    cluscomp)
      while read -r g; do
        n="cluscomp_$(echo "$g" | tr -c 'a-z0-9\n' '_')"
        heat "$n" "ClusComp $g: corpus_valid perplexity change (%)" "$g" "clusters n" "sub-vector dim d" 13
      done < <(groups_of) ;;
    pareto)
      for col in 13:corpus_valid 22:c4; do
        fld=${col%%:*}; nm=${col#*:}; pp=""
        awk -F'\t' -v f="$fld" '$7 > 0 && $(f) != "nan" { print $9, $(f) }' "$WORK/joined.tsv" | sort -k1,1g -k2,2g |
          awk 'NR == 1 || $2 < best { print; best = $2 }' >"$WORK/front_$nm.dat"
        for g in $(groups_of); do
          awk -F'\t' -v g="$g" -v f="$fld" '$4 == g && $7 > 0 && $(f) != "nan" { print $9, $(f), $(f + 1), $(f + 2) }' "$WORK/joined.tsv" >"$WORK/pareto_${nm}_$g.dat"
          pp="$pp${pp:+, }'pareto_${nm}_$g.dat' using 1:2:3:4 with yerrorbars pt 7 title '$g'"
        done
        lg=""; awk '$2 <= 0 { bad = 1 } END { exit bad }' "$WORK/front_$nm.dat" "$WORK"/pareto_"$nm"_*.dat && lg="; set logscale y"
        plot "pareto_$nm" "$nm: perplexity change vs file bits (Pareto front)" "set xlabel 'file bits per parameter'; set ylabel 'perplexity change vs fp (%)'; set key outside right; set grid$lg
plot $pp, 'front_$nm.dat' using 1:2 with steps lw 2 lc rgb 'black' title 'Pareto front'"
      done ;;
  esac
fi

# ---- the section -------------------------------------------------------------------------
rel_plot_dir=$(basename "$PLOT_DIR")
glist=$(groups_of | paste -sd "," - | sed "s/,/, /g")
total_wall=$( { awk -F'\t' '{ s += $NF } END { printf "%.0f", s }' "$WORK/summary.tsv"; } )
ncells=$(wc -l <"$WORK/cells.lst")
nconf=${#CONFIGS[@]}
cmdline=""
[ "$NSAMPLES" != 128 ] && cmdline+="NSAMPLES=$NSAMPLES "
[ "$SEEDS" != "0 1 2" ] && cmdline+="SEEDS=\"$SEEDS\" "
[ "$WINDOWS" != 0 ] && cmdline+="WINDOWS=$WINDOWS "
[ "$ZEROSHOT" != 1 ] && cmdline+="ZEROSHOT=0 "
[ "$ZS_LIMIT" != 0 ] && cmdline+="ZS_LIMIT=$ZS_LIMIT "
[ -n "$EVAL_ARGS" ] && cmdline+="EVAL_ARGS=\"$EVAL_ARGS\" "
cmdline+="scripts/ablate.sh $STUDY $MODEL"
{
  echo "<!-- ablate:$STUDY:begin -->"
  case "$STUDY" in
    tau) echo "## tau: SpQR outlier threshold (w3 / w4, beta1 = beta2 = 16, 3-bit statistics)" ;;
    statq) echo "## statq: statistic quantizer x statistic bits (SpQR w3 / w4, beta1 = beta2 = 16, tau 0.2)" ;;
    groups) echo "## groups: group sizes beta1 x beta2 (SpQR w3, tau 0.2, 3-bit statistics; beta2 fp16 = plain fp16 statistics)" ;;
    cluscomp) echo "## cluscomp: ClusComp algorithm x clusters n x sub-vector dimension d x codebook tuning" ;;
    pareto) echo "## pareto: perplexity change against file bits" ;;
  esac
  echo
  echo "Generated by \`$cmdline\` on $(date -u +%Y-%m-%d); do not edit by hand."
  echo
  echo "- Model \`$(basename "$MODEL")\`; calibration \`$(basename "$CALIB")\`, $NSAMPLES windows of $S tokens, seeds ${SEEDS// /, }."
  echo "- Perplexity at seqlen $S$( [ "$WINDOWS" -gt 0 ] && echo ", first $WINDOWS windows of each text only (WINDOWS=$WINDOWS)" || echo ", every window")$( [ -n "$EVAL_ARGS" ] && echo "; evaluation options \`$EVAL_ARGS\`")."
  if [ "$ZEROSHOT" = 1 ]; then
    echo "- Zero-shot: \`spqr zeroshot\`$( [ "$ZS_LIMIT" -gt 0 ] && echo ", first $ZS_LIMIT documents of each task only (ZS_LIMIT=$ZS_LIMIT)" || echo ", every document")$(gpu_requested && echo ", with \`--gpu\`")."
  else echo "- Zero-shot: not measured (ZEROSHOT=0)."; fi
  echo "- Cells: $ncells of $((nconf * $(echo "$SEEDS" | wc -w))) (configurations x seeds) in the cache, $([ -s "$fpfile" ] && echo "plus the fp cell" || echo "fp cell missing"); measured on: ${machines:-none}; sum of the cells' measured wall times (quantize + evaluation) $total_wall s."
  [ -n "$versions" ] && echo "- spqr: $versions."
  [ "$HAVE_OPT" = 1 ] || echo "- \`$NEED_OPT\` is not available in this build ($SPQR): its cells are not measured."
  echo
  [ -n "$fpline" ] || echo "(The fp cell is not in the cache, so no change against fp can be computed: run once without ASSEMBLE_ONLY.)"
  echo "The first row is the unquantized model (absolute perplexity); every other perplexity cell is the mean change"
  echo "against it in % over the seeds, then (min .. max) over the seeds."
  echo "**best** = lowest mean corpus_valid (c4) change within its group${glist:+ ($glist)}; † = the seed range"
  echo "does not overlap the best cell's of its group on that text (corpus_valid, c4), i.e. a difference outside the calibration-seed spread."
  echo "Zero-shot accuracy in % ± standard error (lm-eval's, averaged over the seeds; for the five-task mean sqrt(sum se²)/5);"
  echo "‡ = the mean differs from fp's by more than 2 combined standard errors. ARC-c and HellaSwag are acc_norm, the rest acc."
  echo
  echo "| cell | seeds | formula bits | file bits | outliers | corpus_valid | wikitext2 | ptb | c4 | 0-shot mean | ARC-e | ARC-c | PIQA | HellaSwag | WinoGrande | LAMBADA | quantize s |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  cat "$WORK/rows.md"
  echo
  if [ "$STUDY" = groups ] && [ -s "$WORK/summary.tsv" ]; then
    echo "File bits per parameter (beta1 rows x beta2 columns):"
    echo
    awk -F'\t' '$7 > 0 { if (!($5 in xs)) xo[++nx] = $5; xs[$5] = 1; if (!($6 in ys)) yo[++ny] = $6; ys[$6] = 1; v[$5, $6] = $9 }
      END { printf "| beta1 \\ beta2 |"; for (j = 1; j <= ny; j++) printf " %s |", yo[j]; printf "\n|---|"; for (j = 1; j <= ny; j++) printf "---|"; print ""
            for (i = 1; i <= nx; i++) { printf "| %s |", xo[i]; for (j = 1; j <= ny; j++) printf " %s |", ((xo[i], yo[j]) in v ? sprintf("%.3f", v[xo[i], yo[j]]) : "-"); print "" } }' "$WORK/joined.tsv"
    echo
  fi
  if [ "$STUDY" = pareto ] && [ -s "$WORK/summary.tsv" ]; then
    echo "Pareto front (no other cell has fewer or equal file bits and a lower mean change):"
    echo
    for col in 13:corpus_valid 22:c4; do
      fld=${col%%:*}
      echo "- ${col#*:}: $(awk -F'\t' -v f="$fld" '$7 > 0 && $(f) != "nan" { print $9 "\t" $(f) "\t" $3 }' "$WORK/joined.tsv" | sort -t "$(printf '\t')" -k1,1g -k2,2g |
        awk -F'\t' 'NR == 1 || $2 < best { printf "%s%s (%.3f bits, %+.2f%%)", (n++ ? ", " : ""), $3, $1, $2; best = $2 }')."
    done
    echo
  fi
  echo "Conclusions (computed from the table):"
  echo
  if [ -s "$WORK/conclusion.md" ]; then cat "$WORK/conclusion.md"; else echo "- no cells measured yet."; fi
  echo
  if [ -z "$GP" ]; then
    echo "(Plots skipped: gnuplot with the pngcairo terminal is not installed; \`apt-get install gnuplot-nox\` and rerun with ASSEMBLE_ONLY=1.)"
    echo
  fi
  for p in ${PLOTS[@]+"${PLOTS[@]}"}; do
    echo "![${p#*|}]($rel_plot_dir/${p%%|*}.png)"
    echo
  done
  echo "<!-- ablate:$STUDY:end -->"
} >"$WORK/section.md"

# replace the study's section in place (or append it), keeping the others
if [ ! -s "$OUT" ]; then
  mkdir -p "$(dirname "$OUT")"
  {
    echo "# Ablations"
    echo
    echo "Written by \`scripts/ablate.sh STUDY\` (one section per study, replaced in place between its markers;"
    echo "the measured cells are cached in CACHE_DIR). Do not edit by hand."
    echo
  } >"$OUT"
fi
if grep -q "^<!-- ablate:$STUDY:begin -->" "$OUT"; then
  awk -v s="$STUDY" -v sec="$WORK/section.md" '
    $0 == "<!-- ablate:" s ":begin -->" { while ((getline l < sec) > 0) print l; skip = 1; next }
    $0 == "<!-- ablate:" s ":end -->" { skip = 0; next }
    !skip' "$OUT" >"$WORK/out.md"
else
  { cat "$OUT"; echo; cat "$WORK/section.md"; } >"$WORK/out.md"
fi
cp "$WORK/out.md" "$OUT"
echo "ablate: wrote the $STUDY section of $OUT ($ncells cells$( [ ${#PLOTS[@]} -gt 0 ] && echo ", ${#PLOTS[@]} plots in $PLOT_DIR"))" >&2
[ "$FAILED" = 0 ] || { echo "ablate: $FAILED cells failed" >&2; exit 1; }
