# results_lib.sh - shared by the scripts that write docs/RESULTS*.md:
# perplexity on the four evaluation texts and zero-shot accuracy of one
# model file, parsed from the CLI's --json lines with sed/awk (no python3).
# Source it after setting SPQR, SHARED, TEXTS, S, WINDOWS, EVAL_ARGS,
# ZEROSHOT, ZS_LIMIT (and FP_PPL for the relative change).

jget() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" | tail -n1; }

gpu_requested() { case " ${EVAL_ARGS:-} " in *" --gpu "*) return 0 ;; esac; return 1; }

# model -> "ppl1 (+d%) | ppl2 (+d%) | ..." (relative to FP_PPL when set)
eval_all() {
  local row="" i=0
  for t in $TEXTS; do
    local extra=""
    [ "$WINDOWS" -gt 0 ] && extra="--max-windows $WINDOWS"
    local ppl
    # shellcheck disable=SC2086
    ppl=$($SPQR eval "$1" --data "$SHARED/data/eval/$t" --seqlen $S $extra $EVAL_ARGS --json 2>/dev/null | tail -n1 | jget ppl)
    i=$((i + 1))
    local ref
    ref=$(echo "${FP_PPL:-}" | cut -d' ' -f$i)
    if [ -z "$ppl" ]; then
      row="$row failed |"
    elif [ -n "$ref" ]; then
      row="$row $(awk "BEGIN{printf \"%.3f (%+.2f%%)\", $ppl, 100*($ppl/$ref-1)}") |"
    else
      row="$row $(printf '%.3f' "$ppl") |"
    fi
  done
  echo "$row"
}

# model -> " mean | arc_e | arc_c | piqa | hellaswag | winogrande | lambada acc / ppl |" (empty when ZEROSHOT != 1)
zs_all() {
  [ "${ZEROSHOT:-0}" = 1 ] || return 0
  local extra="" gpu=""
  [ "${ZS_LIMIT:-0}" -gt 0 ] && extra="--limit $ZS_LIMIT"
  gpu_requested && gpu=--gpu
  local js
  # shellcheck disable=SC2086
  js=$($SPQR zeroshot "$1" $extra $gpu --json 2>/dev/null | tail -n1)
  if [ -z "$js" ]; then
    echo " failed | | | | | | |"
    return 0
  fi
  zt() { echo "$js" | sed -n "s/.*\"$1\":{\([^}]*\)}.*/\1/p" | jget "$2"; } # task key -> value
  pc() { awk -v v="$1" 'BEGIN { printf "%.2f", 100 * v }'; }
  printf ' %s | %s | %s | %s | %s | %s | %s / %.1f |\n' "$(pc "$(echo "$js" | jget mean_acc)")" \
    "$(pc "$(zt arc_easy acc)")" "$(pc "$(zt arc_challenge acc_norm)")" "$(pc "$(zt piqa acc)")" \
    "$(pc "$(zt hellaswag acc_norm)")" "$(pc "$(zt winogrande acc)")" "$(pc "$(zt lambada_openai acc)")" \
    "$(zt lambada_openai ppl)"
}

# The zero-shot legend and header cells (when ZEROSHOT = 1).
zs_legend() {
  [ "${ZEROSHOT:-0}" = 1 ] || return 0
  echo "Zero-shot accuracy in % (\`spqr zeroshot\`, LM Evaluation Harness scoring with BOS, see docs/ZEROSHOT.md$( [ "${ZS_LIMIT:-0}" -gt 0 ] && echo ", first $ZS_LIMIT documents of each task only")):"
  echo "*0-shot mean* = mean of WinoGrande, PIQA, ARC-e (acc) and ARC-c, HellaSwag (acc_norm), the paper's five tasks;"
  echo "ARC-c and HellaSwag columns are acc_norm; LAMBADA is acc / perplexity."
  echo
}
zs_head() { [ "${ZEROSHOT:-0}" = 1 ] && printf ' 0-shot mean | ARC-e | ARC-c | PIQA | HellaSwag | WinoGrande | LAMBADA |'; return 0; }
zs_rule() { [ "${ZEROSHOT:-0}" = 1 ] && printf '%s' '---|---|---|---|---|---|---|'; return 0; }

# Where the evaluations ran (one line, empty for the CPU).
where_line() {
  if gpu_requested; then
    echo "Quantized on the CPU (${QUANT_CORES:-$(nproc)} cores); evaluated with \`--gpu\` on ${GPU_NAME:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 || echo "a CUDA device")}."
  fi
}
