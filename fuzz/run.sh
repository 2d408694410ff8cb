#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 10), then
# prints executions and crashes per target. Crashes are kept in
# fuzz/artifacts/<target>/; the corpus grows in fuzz/corpus/<target>/
# (seeded from the committed fuzz/seeds/<target>/).
#
#   fuzz/run.sh 60            # one minute per target
#   fuzz/run.sh 10 chain      # only the named targets
#
# cargo-fuzz needs nightly-only rustc flags (-Z sanitizer); this machine
# has the stable toolchain only, so RUSTC_BOOTSTRAP=1 is set here, for
# these builds alone (never for the normal build).
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-10}
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
# FUZZ_PROFILE=--dev builds faster, runs slower (the CI smoke run).
profile=${FUZZ_PROFILE:--O}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
if [ $# -eq 0 ]; then
  cargo fuzz build $profile >/dev/null 2>build.log || { cat build.log; exit 1; }
else
  for t in "${targets[@]}"; do cargo fuzz build $profile "$t" >/dev/null 2>build.log || { cat build.log; exit 1; }; done
fi
status=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  seeds=(); [ -d "seeds/$t" ] && seeds=("seeds/$t")
  mkdir -p logs; log="logs/$t.log"
  cargo fuzz run $profile "$t" "corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  crashes=$(find "artifacts/$t" -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' | wc -l)
  summary+=("$(printf '%-18s executions %12s  crashes %s' "$t" "${execs:-0}" "$crashes")")
  if [ $rc -ne 0 ] || [ "$crashes" -ne 0 ]; then status=1; tail -30 "$log"; fi
done
printf '%s\n' "${summary[@]}"
exit $status
