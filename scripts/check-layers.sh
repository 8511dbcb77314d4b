#!/usr/bin/env bash
# check-layers.sh - the include graph follows the layering of
# docs/ARCHITECTURE.md: no file under src/ or tools/ includes a header of a
# layer above its own, and no two headers include each other (directly or
# through a chain). Prints every violation; exit status 1 if there is any.
set -euo pipefail
cd "$(dirname "$0")/.."

# layer of a path (a file or a header), by folder
layer() {
    case "$1" in
        include/spqr.h) echo 0 ;;
        src/util/*) echo 0 ;;
        src/io/* | src/tokenizer/*) echo 1 ;;
        src/format/*) echo 2 ;;
        src/kernels/* | src/formats/*) echo 3 ;;
        src/model/*) echo 4 ;;
        src/train/*) echo 5 ;;
        src/quant/*) echo 6 ;;
        src/eval/*) echo 7 ;;
        tools/*) echo 8 ;;
        *) echo "?" ;;
    esac
}
names=(util io/tokenizer format kernels/formats model train quant eval tools)

bad=0
edges=$(mktemp)
trap 'rm -f "$edges"' EXIT
while IFS= read -r f; do
    lf=$(layer "$f")
    dir=$(dirname "$f")
    while IFS= read -r inc; do
        # resolve the include like the compiler: relative to the file, then src/, then include/
        t=""
        for cand in "$dir/$inc" "src/$inc" "include/$inc"; do
            if [ -f "$cand" ]; then t=$(realpath --relative-to=. "$cand"); break; fi
        done
        [ -z "$t" ] && continue
        lt=$(layer "$t")
        if [ "$lt" != "?" ] && [ "$lf" != "?" ] && [ "$lt" -gt "$lf" ]; then
            echo "layering: $f (${names[$lf]}) includes $t (${names[$lt]})"
            bad=1
        fi
        echo "$f $t" >>"$edges"
    done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f")
done < <(find src tools include -name '*.[ch]' -o -name '*.cu' -o -name '*.cuh' | sort)

# cycles among headers: tsort reports them
if ! tsort "$edges" >/dev/null 2>"$edges.err"; then
    echo "include cycle:"
    sed 's/^/  /' "$edges.err"
    bad=1
fi
rm -f "$edges.err"
if [ "$bad" = 0 ]; then echo "check-layers: include graph OK ($(wc -l <"$edges") includes)"; fi
exit $bad
