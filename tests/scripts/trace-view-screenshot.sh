#!/usr/bin/env bash
# Documented check of the embedded trace view: runs the daemon with the demo agent (no collector),
# drives a prompt with a tool call and a permission vote, and renders /debug/traces in headless
# Chromium (Debian's `chromium`; installed if missing and we are root).
#   tests/scripts/trace-view-screenshot.sh [OUT.png]      (default: docs/trace-view.png)
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-docs/trace-view.png}"
if ! command -v chromium >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "install Debian's chromium first"; exit 1; }
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
cargo build -q -p acpd
ws=$(mktemp -d); log=$(mktemp); profile=$(mktemp -d)
echo "The secret word is PINEAPPLE-42." > "$ws/hello.txt"
OTEL_BSP_SCHEDULE_DELAY=100 target/debug/acpd serve --port 0 --workspace "$ws" 2> "$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$ws" "$profile"' EXIT
for _ in $(seq 1 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
base=$(sed -n 's/^acpd listening on //p' "$log" | head -1)
s=$(curl -sf -X POST "$base/session" -H 'Content-Type: application/json' -d '{}')
sid=$(jq -r .sessionId <<<"$s"); cid=$(jq -r .clientId <<<"$s")
prompt() {
  curl -sf -X POST "$base/session/$sid/prompt" -H "X-Qwen-Client-Id: $cid" -H 'Content-Type: application/json' \
    -H "traceparent: 00-$(openssl rand -hex 16)-$(openssl rand -hex 8)-01" \
    -d "{\"prompt\":[{\"type\":\"text\",\"text\":\"$1\"}]}" >/dev/null
}
prompt "read hello.txt"
prompt "write notes.txt the agent wrote this"
for _ in $(seq 1 50); do
  req=$(curl -sf -N --max-time 0.5 "$base/session/$sid/events" -H "X-Qwen-Client-Id: $cid" -H 'Last-Event-ID: 0' \
    | sed -n 's/^data: //p' | jq -r 'select(.type=="permission_request") | .data.requestId' | tail -1) || true
  [ -n "$req" ] && break
done
curl -sf -X POST "$base/session/$sid/permission/$req" -H "X-Qwen-Client-Id: $cid" -H 'Content-Type: application/json' \
  -d '{"outcome":{"outcome":"selected","optionId":"allow"}}' >/dev/null
sleep 2 # spans are batched every 100 ms; the agent flushes after its turn
# Open the write prompt's trace (the one with the most spans: tools, permission, agent spans).
trace=$(curl -sf "$base/debug/traces.json" | jq -r '[.traces[] | select(.rootName=="POST /session/{id}/prompt")] | max_by(.spanCount) | .traceId')
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --virtual-time-budget=3000 \
  --window-size=1400,900 --screenshot="$out" "$base/debug/traces#$trace" 2>/dev/null
echo "trace view rendered to $out"
