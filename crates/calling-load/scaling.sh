#!/bin/sh
# Relay capacity by server cores: the server on 1, 2, 4, 8… cores, the
# generator processes on the cores left, 1v1 calls ramped until a round
# loses more than 0.1 % or its p99 relay delay passes 5 ms; then the plain
# UDP forwarder on one core, and a 16-member group call on one core.
#
#   crates/calling-load/scaling.sh BIN_DIR OUT_DIR [CORE_COUNTS]
#
# BIN_DIR holds calling-server and calling-load (release builds); OUT_DIR
# gets one JSON report per run and the table (scaling.txt). CORE_COUNTS
# defaults to "1 2 4 8"; the machine needs at least twice the largest (the
# generator needs about as much CPU per call as the server). Each run is
# bounded by --max-secs.
set -eu
bin=$1
out=$2
counts=${3:-1 2 4 8}
cpus=$(nproc)
command -v taskset >/dev/null || { echo "taskset is needed to pin the server and the generators" >&2; exit 1; }
mkdir -p "$out"
run() {
    name=$1
    shift
    echo "== $name" | tee -a "$out/scaling.txt"
    "$bin/calling-load" --spawn-server "$bin/calling-server" --max-secs 60 \
        --json "$out/$name.json" "$@" 2>>"$out/stderr.txt" | tee -a "$out/scaling.txt"
}
for k in $counts; do
    if [ $((2 * k)) -gt "$cpus" ]; then
        echo "skipping $k server cores: $cpus CPUs" | tee -a "$out/scaling.txt"
        continue
    fi
    calls=""
    for step in 2 3 4 5 6 7 8 10 12; do
        calls="$calls${calls:+,}$((k * step * 125))"
    done
    extra=""
    if [ "$k" -eq 1 ]; then extra="--udp-baseline"; fi
    # shellcheck disable=SC2086
    run "1v1-server-cores-$k" --server-cpus "0-$((k - 1))" \
        --generator-cpus "$k-$((cpus - 1))" --calls "$calls" $extra
done
# What several endpoints buy: the same server cores with one endpoint.
if [ "$cpus" -ge 8 ]; then
    run "1v1-server-cores-4-one-endpoint" --server-cpus 0-3 --generator-cpus "4-$((cpus - 1))" \
        --calls 500,1000,1500,2000,2500,3000,3500,4000,5000,6000 --server-arg=--quic-endpoints=1
fi
run "group16-server-cores-1" --server-cpus 0 --generator-cpus "1-$((cpus - 1))" \
    --members 16 --calls 20,40,80,120,160,240,320
