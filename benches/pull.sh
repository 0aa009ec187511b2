#!/usr/bin/env bash
# What moving a version series through a registry costs (issue 13): for
# every version step of the django and numpy series of the full corpus,
# bytes received and wall time of `puzzle pull` of the next version into a
# store holding the earlier ones, against `skopeo copy` of the plain image
# into an OCI layout holding the earlier ones (it skips layers it has).
# The registry runs in a network namespace of this script's own
# (benches/nsreg.sh); bytes are counted on the veth, so every request,
# header and retry is in them.
#
#   benches/pull.sh
#
# Two puzzle cases, as images reach a registry in practice:
#   kept   one long-lived build store builds every version in turn and
#          pushes it (its packs grow one version at a time)
#   fresh  every version is built in a fresh store and pushed (the packs
#          of consecutive versions share nothing)
# Then `build docker://` against `build oci:` of the same images, into a
# fresh store each time, by turns (MB/s of layer tar; the registry here is
# on the namespace's veth, unshaped).
#
# Env: PUZZLE_BIN (default target/release/puzzle, else target/debug/puzzle),
# PUZZLE_CORPUS (default corpora/out/full), SERIES ("django numpy"),
# RUNS (3: build comparison runs), WORK (/tmp/puzzle-pull-bench),
# FRAME_TARGET (bytes: the build stores are made with --frame-target).
# Needs root, ip, docker-registry, skopeo, jq, bc and the full corpus.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin=${PUZZLE_BIN:-$here/target/release/puzzle}
[ -x "$bin" ] || bin=$here/target/debug/puzzle
corpus=${PUZZLE_CORPUS:-$here/corpora/out/full}
SERIES=${SERIES:-django numpy}
RUNS=${RUNS:-3}
WORK=${WORK:-/tmp/puzzle-pull-bench}
for t in ip docker-registry skopeo jq bc mkfs.ext4; do
  command -v "$t" >/dev/null || { echo "needs $t (scripts/setup.sh installs it)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "needs root (network namespace, loop mount)" >&2; exit 2; }
[ -x "$bin" ] || { echo "build puzzle first (cargo build --release)" >&2; exit 2; }

tags_of() { # SERIES: the deterministic tags of the series, in version order
  jq -r '.manifests[].annotations["org.opencontainers.image.ref.name"]' "$corpus/index.json" |
    grep -E "^$1-[0-9.]+\$" | sort -V
}
for s in $SERIES; do
  [ -n "$(tags_of "$s")" ] || { echo "no $s images in $corpus (corpora/build.sh --full)" >&2; exit 2; }
done

. "$here/benches/nsreg.sh"
nsreg_up ppull "$WORK"

p() { "$bin" --no-progress "$@"; }
now() { date +%s.%N; }
flags=(--tls-verify=false)
ft=()
[ -z "${FRAME_TARGET:-}" ] || ft=(--frame-target "$FRAME_TARGET")

# Fill the registry: plain images, and the puzzle images of both cases.
for s in $SERIES; do
  for t in $(tags_of "$s"); do
    skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$corpus:$t" "docker://$reg/plain/$s:$t"
    p --store "$fs/kept-$s" build "oci:$corpus:$t" --tag "$t" "${ft[@]}" >/dev/null 2>&1
    p --store "$fs/kept-$s" push "$t" "docker://$reg/kept/$s:$t" "${flags[@]}" >/dev/null 2>&1
    rm -rf "$fs/fresh-build"
    p --store "$fs/fresh-build" build "oci:$corpus:$t" --tag "$t" "${ft[@]}" >/dev/null 2>&1
    p --store "$fs/fresh-build" push "$t" "docker://$reg/fresh/$s:$t" "${flags[@]}" >/dev/null 2>&1
  done
done
rm -rf "$fs/fresh-build"

# One step: prints "seconds bytes".
step() { # TOOL(skopeo|kept|fresh) SERIES TAG
  local t0 b0
  b0=$(nsreg_rx)
  t0=$(now)
  case $1 in
    skopeo) skopeo --insecure-policy copy -q --src-tls-verify=false \
      "docker://$reg/plain/$2:$3" "oci:$fs/layout-$2:$3" >/dev/null ;;
    *) p --store "$fs/pull-$1-$2" pull "docker://$reg/$1/$2:$3" --tag "$3" "${flags[@]}" >/dev/null 2>&1 ;;
  esac
  echo "$(echo "$(now) - $t0" | bc -l) $(($(nsreg_rx) - b0))"
}

echo "binary $bin; registry $reg in namespace $nsreg_ns (veth, unshaped); frame target ${FRAME_TARGET:-of the default}"
echo
echo "| series | step | skopeo MB | kept MB | fresh MB | kept / skopeo | fresh / skopeo | skopeo s | kept s | fresh s |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
declare -A total
for s in $SERIES; do
  prev=""
  for t in $(tags_of "$s"); do
    if [ -z "$prev" ]; then # the first version: the destination starts with it
      for tool in skopeo kept fresh; do step "$tool" "$s" "$t" >/dev/null; done
      prev=$t
      continue
    fi
    read -r s_sec s_b < <(step skopeo "$s" "$t")
    read -r k_sec k_b < <(step kept "$s" "$t")
    read -r f_sec f_b < <(step fresh "$s" "$t")
    total[s]=$((${total[s]:-0} + s_b)); total[k]=$((${total[k]:-0} + k_b)); total[f]=$((${total[f]:-0} + f_b))
    printf '| %s | %s -> %s | %.1f | %.1f | %.1f | %.3f | %.3f | %.2f | %.2f | %.2f |\n' "$s" "$prev" "$t" \
      "$(echo "$s_b / 1000000" | bc -l)" "$(echo "$k_b / 1000000" | bc -l)" "$(echo "$f_b / 1000000" | bc -l)" \
      "$(echo "$k_b / $s_b" | bc -l)" "$(echo "$f_b / $s_b" | bc -l)" "$s_sec" "$k_sec" "$f_sec"
    prev=$t
  done
done
printf '| **total** | | %.1f | %.1f | %.1f | **%.3f** | **%.3f** | | | |\n' \
  "$(echo "${total[s]} / 1000000" | bc -l)" "$(echo "${total[k]} / 1000000" | bc -l)" "$(echo "${total[f]} / 1000000" | bc -l)" \
  "$(echo "${total[k]} / ${total[s]}" | bc -l)" "$(echo "${total[f]} / ${total[s]}" | bc -l)"

# build docker:// against build oci: of the last image of each series.
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "| image | source | MB/s (median of $RUNS) | each run |"
echo "|---|---|---:|---|"
for s in $SERIES; do
  t=$(tags_of "$s" | tail -1)
  : >"$WORK/oci.rates"; : >"$WORK/reg.rates"
  for _ in $(seq "$RUNS"); do
    for src in oci reg; do
      rm -rf "$fs/b"
      case $src in
        oci) from="oci:$corpus:$t" ;;
        reg) from="docker://$reg/plain/$s:$t" ;;
      esac
      p --store "$fs/b" build "$from" --tag "$t" --json "${flags[@]}" 2>/dev/null |
        jq -r '.data | .bytes_uncompressed / .seconds / 1e6' >>"$WORK/$src.rates"
    done
  done
  for src in oci reg; do
    printf '| %s | %s | %.0f | %s |\n' "$t" "$([ $src = oci ] && echo "oci:" || echo "docker://")" \
      "$(median <"$WORK/$src.rates")" "$(xargs printf '%.0f, ' <"$WORK/$src.rates" | sed 's/, $//')"
  done
done
