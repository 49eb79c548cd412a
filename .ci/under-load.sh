#!/usr/bin/env bash
# The whole test suite on a busy machine: one CPU-burning process per core (started here,
# stopped when the script ends, however it ends) keeps every core busy while the README's
# test command runs, so tests that check a real-time bound are tried as a developer's or CI's
# loaded machine runs them. Not part of .ci/run (it doubles the suite's time).
#
#   bash .ci/under-load.sh            # one run
#   RUNS=3 bash .ci/under-load.sh     # three runs in a row; each prints its result line
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-1}
cores=$(nproc)
burners=()
stop_burners() {
  for pid in "${burners[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_burners EXIT

export FLOODWALL_REQUIRE_REDIS=1 FLOODWALL_REQUIRE_POSTGRES=1 CARGO_TERM_COLOR=never
# Build first, unloaded: the load is for the tests, not for the compiler.
cargo test --workspace --all-features --locked --no-run >/dev/null 2>&1 \
  || { echo "build failed"; exit 1; }

for _ in $(seq 1 "$cores"); do
  python3 -c 'while True: pass' &
  burners+=($!)
done
echo "under load: $cores CPU-burning processes (${burners[*]})"

failed=0
for run in $(seq 1 "$runs"); do
  log=target/under-load-run-$run.log
  started=$(date +%s)
  cargo test --workspace --all-features --locked --no-fail-fast >"$log" 2>&1
  code=$?
  passed=$(grep -Eo '^test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
  failing=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
  echo "run $run: exit $code, $passed passed, $failing failed, $(( $(date +%s) - started )) s"
  if [ "$code" != 0 ]; then
    grep -E '^test .* FAILED$|panicked at' "$log" | head -20
    echo "(the whole output: $log)"
    failed=1
  fi
done
exit "$failed"
