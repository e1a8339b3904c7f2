#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the ones named) for N seconds each, seeded with the committed
# corpus, and exits non-zero if any target crashed (its reproducer is then in artifacts/<target>/).
#
#   tests/fuzz/run-all.sh [seconds=60] [target...]
#
# New inputs go to work/<target>/ (git-ignored), never into corpus/: add a crash's reproducer to
# corpus/<target>/ by hand once it is fixed. FUZZ_CARGO picks the toolchain (see README.md).
set -uo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift $(( $# > 0 ? 1 : 0 ))
# The targets never load plugins: skip building the WASM guests into the daemon.
export ACPD_SKIP_BUILTIN_PLUGINS=1
read -r -a fuzz <<< "${FUZZ_CARGO:-env RUSTC_BOOTSTRAP=1 cargo fuzz}"
# No sanitizer by default: the code under test is safe Rust, and ASan costs exec rate.
# FUZZ_SANITIZER=address (nightly only) adds it.
sanitizer=(-s "${FUZZ_SANITIZER:-none}")

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <("${fuzz[@]}" list)
fi
"${fuzz[@]}" build "${sanitizer[@]}" || exit 2
# The binaries run directly, not through `cargo fuzz run`: that would rebuild the daemon whenever
# its source changed mid-run, eating the time budget of the targets after the change.
bin="target/$(rustc -vV | sed -n 's/^host: //p')/release"

failed=()
summary=()
for t in "${targets[@]}"; do
  mkdir -p "work/$t"
  log="work/$t.log"
  echo "== $t: ${secs} s"
  mkdir -p "artifacts/$t"
  "$bin/$t" -artifact_prefix="artifacts/$t/" -max_total_time="$secs" -timeout=10 \
    -rss_limit_mb=4096 -print_final_stats=1 "work/$t" "corpus/$t" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  corp=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  if [ $rc -ne 0 ]; then
    failed+=("$t")
    grep -E 'panicked|ERROR: libFuzzer|Test unit written' "$log" | head -5
  fi
  summary+=("$(printf '%-16s rc=%-3s execs=%-10s execs/s=%-8s corpus=%s' "$t" "$rc" "${execs:-?}" "${rate:-?}" "${corp:-?}")")
done
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]} (reproducers in tests/fuzz/artifacts/; logs in tests/fuzz/work/)" >&2
  exit 1
fi
