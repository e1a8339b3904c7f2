#!/usr/bin/env bash
# Schema-driven HTTP fuzzing: schemathesis (PyPI) generates requests from the daemon's own
# /openapi.json, follows its links (create a session, then act on it) and checks every answer.
#
#   tests/schemathesis/run.sh [SECONDS]      # default 120; RELIABILITY.md quotes the figures
#
# Passes only when schemathesis finds nothing (no 5xx, every status, content type, header and
# body as documented, malformed input refused), the daemon never logs a panic, still serves
# afterwards and exits 0 on SIGTERM. Two checks are left out on purpose:
# - `positive_data_acceptance`: the daemon refuses well-formed values that are wrong for its
#   state (a client id it did not issue for that session, a cwd outside its workspaces), which
#   no schema can express;
# - `use_after_free`: `POST /session/{id}/load` restores a closed session through the agent's
#   `session/load` (API.md), so a closed id can legitimately answer again. That a closed
#   session answers 404 until loaded is asserted by tests/tests/sessions_and_events.rs.
# One worker: stateful sequences of two workers can pick the same session id and close each
# other's sessions, which reads as "created resource not found".
set -euo pipefail
secs="${1:-120}"
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/acpd-ci/target}"
venv="${ACPD_SCHEMATHESIS_VENV:-$HOME/.cache/acpd-ci/schemathesis}"
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis==4.32.5"
fi
cargo build --quiet -p acpd
acpd="$CARGO_TARGET_DIR/debug/acpd"

report="$(realpath -m "${ACPD_SCHEMATHESIS_REPORT:-$CARGO_TARGET_DIR/schemathesis}")"
mkdir -p "$report"
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/ws"
# Session limits raised: at the default limits the fuzzer, which never closes what it opens,
# would mostly meet the (documented, by design) 503 `session_limit_exceeded`.
cat > "$work/acpd.toml" <<'TOML'
[limits]
max_sessions = 100000
max_sessions_per_workspace = 100000
TOML
token="st-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
"$acpd" serve --port 0 --workspace "$work/ws" --config "$work/acpd.toml" --token "$token" \
  >"$work/stdout" 2>"$report/acpd.stderr" &
pid=$!
for _ in $(seq 100); do
  base="$(sed -n 's/^acpd listening on \(http:\/\/[^ ]*\).*/\1/p' "$report/acpd.stderr" | head -1)"
  [ -n "$base" ] && break
  sleep 0.1
done
[ -n "$base" ] || { echo "acpd did not start:"; cat "$report/acpd.stderr"; exit 1; }

status=0
# From the scratch folder: schemathesis and hypothesis keep their caches in the working directory.
(cd "$work" && "$venv/bin/schemathesis" run "$base/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks all --exclude-checks positive_data_acceptance,use_after_free \
  --max-time "$secs" --request-timeout 10 --workers 1 \
  --report junit --report-dir "$report" --seed "${ACPD_SCHEMATHESIS_SEED:-$RANDOM$RANDOM}") || status=$?

fail() { echo "FAIL: $*"; status=1; }
grep -q "panicked" "$report/acpd.stderr" && fail "the daemon panicked: $(grep -m3 panicked "$report/acpd.stderr")"
kill -0 "$pid" 2>/dev/null || fail "the daemon is gone"
code="$(curl -s -o /dev/null -w '%{http_code}' "$base/health")"
[ "$code" = 200 ] || fail "/health answered $code after the run"
kill -TERM "$pid"
exit_code=0
timeout 20 tail --pid="$pid" -f /dev/null || fail "no exit within 20 s of SIGTERM"
wait "$pid" || exit_code=$?
[ "$exit_code" = 0 ] || fail "exit code $exit_code after SIGTERM"
echo "daemon: $(grep -c . "$report/acpd.stderr") stderr lines, exit $exit_code; report and daemon log in $report"
exit "$status"
