#!/usr/bin/env bash
# Compares the ingest of strata builds: ingest-only runs of the side-by-side benchmark
# (`ONLY=strata QUERIES=0`, three rounds each by default), alternating the builds and rotating
# their order at each pass, so that the machine's drift falls on all of them alike.
#
# usage: benches/ab_ingest.sh PASSES BUILD [BUILD...]
#   BUILD: a strata binary (copy `target/release/strata` aside after each build).
#   HOSTS and HOURS are passed on to the benchmark (default 20 and 6).
#
# The benchmark starts the binary at `target/release/strata`. `cargo bench` links that
# path again from its own build before each run, so this script runs the benchmark's
# executable directly, checks after each run that the binary there is still the one
# copied, and puts the original back at the end.
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
passes=$1
shift
builds=("$@")
for b in "${builds[@]}"; do
    [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }
done

cd "$(dirname "$0")/.."
exe=$(cargo bench --bench vs_peers --no-run 2>&1 |
    sed -n 's/.*Executable benches\/vs_peers.rs (\(.*\))$/\1/p' | tail -1)
[ -x "$exe" ] || { echo "could not build the vs_peers benchmark" >&2; exit 1; }
bin=target/release/strata
work=$(mktemp -d)
cp "$bin" "$work/original"
trap 'cp --remove-destination "$work/original" "$bin"; rm -rf "$work"' EXIT

: > "$work/runs"
for pass in $(seq 1 "$passes"); do
    n=${#builds[@]}
    for j in $(seq 0 $((n - 1))); do
        b=${builds[$(((j + pass) % n))]}
        cp --remove-destination "$b" "$bin"
        ONLY=strata QUERIES=0 NO_RECORD=1 HOSTS=${HOSTS:-20} HOURS=${HOURS:-6} \
            "$exe" --bench > "$work/log" 2>&1
        if ! cmp -s "$b" "$bin"; then
            echo "the run did not use $b" >&2
            exit 1
        fi
        rate=$(sed -n 's/.*median of [0-9]* rounds: \([0-9]*\) samples\/s.*/\1/p' "$work/log")
        cpu=$(sed -n 's/.*median of [0-9]* rounds: .*receiver CPU \([0-9.]*\) s.*/\1/p' "$work/log")
        rss=$(sed -n 's/.*peak RSS \([0-9]*\) MiB after ingest, [0-9]* after counting, \([0-9]*\) after persisting.*/\1\/\2/p' "$work/log" | tail -1)
        if [ -z "$rate" ] || [ -z "$cpu" ]; then
            echo "no result from $b; the benchmark said:" >&2
            tail -20 "$work/log" >&2
            exit 1
        fi
        echo "$b samples/s $rate receiver-CPU-s $cpu peak-RSS-MiB(ingest/persist) $rss" |
            tee -a "$work/runs"
    done
done

echo
awk '{ n[$1]++; cpu[$1] += $5; lr[$1] += log($3) }
     END { for (b in n) printf "%s: %d runs, mean receiver CPU %.2f s, geometric mean %.0f samples/s\n",
                                b, n[b], cpu[b] / n[b], exp(lr[b] / n[b]) }' "$work/runs"
