#!/usr/bin/env bash
# Builds every fuzz target and runs each, then prints executions, time,
# executions per second and crashes per target. Crashes are kept in
# fuzz/artifacts/<target>/; the corpus grows in fuzz/corpus/<target>/
# (seeded from the committed fuzz/seeds/<target>/).
#
#   fuzz/run.sh 60                      # one minute per target
#   fuzz/run.sh 10 chain                # only the named targets
#   fuzz/run.sh --runs 10000000         # the long run: 10 M executions each
#   fuzz/run.sh --runs 10000000 chain   # ... of the named targets
#
# A long run (--runs) with no fuzz/corpus/ yet starts from
# fuzz/corpus.tar.xz, the minimised corpora of the last long runs (so a
# new machine resumes where they stopped); the short runs (CI's smoke)
# start from the small committed seeds only.
#
# Build profile (FUZZ_PROFILE, cargo-fuzz flags):
# - default `-O -a -s none`: optimised, with overflow checks and debug
#   assertions (an overflow in safe Rust is a panic, so a finding), and no
#   AddressSanitizer. Plexus has no `unsafe`; ASan only checks the
#   dependencies' unsafe code and costs much: its allocator quarantine
#   page-faults on every fresh SQLite connection (blocksync ran 150
#   exec/s with ASan, 1,036 without, on this machine).
# - `--dev` (the CI smoke run): unoptimised, debug assertions, ASan; the
#   fastest to build.
# - `-O` with ASan: set FUZZ_PROFILE="-O" to look for memory errors in
#   dependencies.
#
# cargo-fuzz needs nightly-only rustc flags (-Z sanitizer); this machine
# has the stable toolchain only, so RUSTC_BOOTSTRAP=1 is set here, for
# these builds alone (never for the normal build).
set -uo pipefail
cd "$(dirname "$0")"
runs=""
if [ "${1:-}" = "--runs" ]; then
  runs=${2:?--runs needs a count}
  shift 2
  limit=(-runs="$runs")
else
  secs=${1:-10}
  shift || true
  limit=(-max_total_time="$secs")
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
if [ -n "$runs" ] && [ ! -d corpus ] && [ -f corpus.tar.xz ]; then
  mkdir corpus && tar -xJf corpus.tar.xz -C corpus
fi
export RUSTC_BOOTSTRAP=1
read -r -a profile <<<"${FUZZ_PROFILE:--O -a -s none}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
if [ $# -eq 0 ]; then
  cargo fuzz build "${profile[@]}" >/dev/null 2>build.log || { cat build.log; exit 1; }
else
  for t in "${targets[@]}"; do
    cargo fuzz build "${profile[@]}" "$t" >/dev/null 2>build.log || { cat build.log; exit 1; }
  done
fi
status=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" logs
  seeds=(); [ -d "seeds/$t" ] && seeds=("seeds/$t")
  log="logs/$t.log"
  start=$(date +%s)
  cargo fuzz run "${profile[@]}" "$t" "corpus/$t" "${seeds[@]}" -- \
    "${limit[@]}" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  secs_taken=$(( $(date +%s) - start ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  crashes=$(find "artifacts/$t" -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' | wc -l)
  rate=$(( ${execs:-0} / (secs_taken > 0 ? secs_taken : 1) ))
  summary+=("$(printf '%-18s executions %12s  seconds %6s  exec/s %7s  crashes %s' \
    "$t" "${execs:-0}" "$secs_taken" "$rate" "$crashes")")
  if [ $rc -ne 0 ] || [ "$crashes" -ne 0 ]; then status=1; tail -30 "$log"; fi
done
printf '%s\n' "${summary[@]}"
exit $status
