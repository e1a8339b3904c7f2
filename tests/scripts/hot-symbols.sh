#!/usr/bin/env bash
# Regenerates host/link/hot-symbols.txt: the functions the release daemon runs while it serves
# the console, the trace view, /health, /metrics and prompts on two sessions, exporting its
# telemetry over OTLP, and shuts down, then those it ran only while it started. The release link
# places them first and together, in that order (host/build.rs), so the few MiB of code a running
# daemon uses are not spread over the whole 28 MB of text (BENCHMARKS.md, "Round five": idle RSS
# about 10 MiB lower; "Round ten": the exporters' code), and the start-up code the daemon
# releases once it is ready (host/src/startup_pages.rs) is not interleaved with the code serving
# faults back in. Names are the linker's (mangled, with their hashes), so the list goes stale as
# the code, dependencies or the toolchain change: run this again then. Needs valgrind, curl and
# python3; takes about 5 minutes after the builds.
#
# usage: tests/scripts/hot-symbols.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
work=$(mktemp -d)
trap 'pkill -f "callgrind.*--port 4197" 2>/dev/null || true; kill "${sink:-}" 2>/dev/null || true
  rm -rf "$work"' EXIT
mkdir -p "$work/ws" "$work/got"

# An OTLP receiver (http/protobuf) that answers every export and notes its signal: a daemon that
# exports runs the exporters' code, the HTTP client's and the batching's, which serving a
# deployment with a collector keeps resident; without a receiver none of it would be listed.
python3 -c '
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
        open(os.path.join(sys.argv[1], self.path.strip("/").replace("/", "-")), "a").write("x")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 4198), H).serve_forever()
' "$work/got" &
sink=$!
export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4198 OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
# Exports while the profile runs, not only at shutdown (which flushes through another path).
export OTEL_BSP_SCHEDULE_DELAY=200 OTEL_BLRP_SCHEDULE_DELAY=200 OTEL_METRIC_EXPORT_INTERVAL=500

# Waits up to 300 s until the receiver has had every signal since it was cleared.
wait_exports() {
  for _ in $(seq 1 600); do
    [ -f "$work/got/v1-traces" ] && [ -f "$work/got/v1-metrics" ] && [ -f "$work/got/v1-logs" ] && return
    sleep 0.5
  done
  echo "hot-symbols.sh: in 300 s the receiver got only: $(ls "$work/got" | tr "\n" " ")" >&2
  exit 1
}

# Polls /health for up to 300 s (valgrind starts the daemon slowly); a daemon that never answers
# ends the run with an error.
wait_health() {
  for _ in $(seq 1 600); do curl -sf http://127.0.0.1:4197/health >/dev/null && return; sleep 0.5; done
  echo "hot-symbols.sh: the daemon did not answer /health in 300 s" >&2
  exit 1
}

# The daemon, driven as a user would: a sequence, not a load (after `wait_health`).
drive() {
  local u=http://127.0.0.1:4197 r id a
  for path in /health /metrics /capabilities / /debug/traces; do curl -sf $u$path >/dev/null; done
  for _ in 1 2; do
    r=$(curl -sf -X POST $u/session -H 'content-type: application/json' -d "{\"cwd\":\"$work/ws\"}")
    id=$(python3 -c 'import sys,json; print(json.loads(sys.argv[1])["sessionId"])' "$r")
    for _ in 1 2 3; do
      a=$(curl -sf -X POST "$u/session/$id/prompt" -H 'content-type: application/json' \
        -d '{"prompt":[{"type":"text","text":"hello there"}]}')
      # The stream stays open: it is cut once the turn is seen to end.
      { timeout 120 curl -sfN "$u/session/$id/events" \
        -H "Last-Event-ID: $(python3 -c 'import sys,json; print(json.loads(sys.argv[1])["lastEventId"])' "$a")" \
        -H "X-Qwen-Event-Epoch: $(python3 -c 'import sys,json; print(json.loads(sys.argv[1])["eventEpoch"])' "$a")" \
        || true; } | grep -m1 -q turn_complete
    done
    curl -sf "$u/session/$id" >/dev/null
    curl -sf "$u/session/$id/pending-prompts" >/dev/null
  done
  curl -sf $u/debug/traces.json >/dev/null
  curl -sf $u/metrics >/dev/null
}

# The daemon as released, and as the load harness builds it (its counting allocator changes the
# hashes of acpd's own functions): both sets of names, serving's of both builds before start-up's.
: >"$work/serve"
: >"$work/start"
for features in "" "alloc-count"; do
  cargo build -q --release -p acpd --bin acpd ${features:+--features $features}
  cp "$target/release/acpd" "$work/acpd"
  # One start first, outside the profile: a daemon's usual start maps its compiled plugins from
  # the cache, and compiling them (a first start) would add the compiler's code to the list. It
  # runs under valgrind too: the compile cache's key holds the CPU features wasmtime detects, and
  # valgrind's emulated CPU has other ones than the machine's.
  (cd "$work/ws" && timeout 600 valgrind --tool=none -q "$work/acpd" serve --port 4197 \
    --state-dir "$work/state" >"$work/warm.log" 2>&1) &
  daemon=$!
  wait_health
  pkill -TERM -f "acpd serve --port 4197"
  wait "$daemon"
  # Every wait has its deadline: a daemon that does not stop ends the run with an error.
  (cd "$work/ws" && timeout 900 valgrind --tool=callgrind --demangle=no --dump-instr=no \
    --callgrind-out-file="$work/cg.out" "$work/acpd" serve --port 4197 \
    --state-dir "$work/state" >"$work/daemon.log" 2>&1) &
  daemon=$!
  wait_health
  # Start-up's profile ends here (the first dump, `cg.out.1`); serving's is the rest.
  callgrind_control -d "$work/acpd" >/dev/null 2>&1
  rm -f "$work/got"/*
  drive
  wait_exports
  pkill -TERM -f "callgrind.*--port 4197"
  wait "$daemon"
  nm --defined-only "$work/acpd" | awk '$2 ~ /^[tTwW]$/ {print $3}' | sort -u >"$work/syms"
  cp "$work/syms" "$work/syms-${features:-release}"
  # Callgrind names a function once in full per file, then by number: every full name, in
  # first-seen order, serving's first.
  parts=$(ls "$work"/cg.out* | grep -v '\.1$')
  [ -n "$parts" ] && [ -f "$work/cg.out.1" ] || { echo "hot-symbols.sh: no start-up dump" >&2; exit 1; }
  names() {
    grep -ohE '^c?fn=\([0-9]+\) .+' "$@" | sed -E 's/^c?fn=\([0-9]+\) //' \
      | awk 'NR == FNR { defined[$0] = 1; next } ($0 in defined) && !seen[$0]++' "$work/syms" -
  }
  # shellcheck disable=SC2086 # one path per word
  names $parts >>"$work/serve"
  names "$work/cg.out.1" >>"$work/start"
  rm -f "$work"/cg.out*
  # Only compiling runs the register allocator: its code in the list means the profiled start
  # compiled the plugins, and the list would be the compiler's as much as the daemon's.
  if grep -q regalloc2 "$work/serve" "$work/start"; then
    echo "hot-symbols.sh: the profiled start compiled the plugins (the warm-up missed the cache)" >&2
    exit 1
  fi
done
awk '!seen[$0]++' "$work/serve" "$work/start" >"$root/host/link/hot-symbols.txt"
echo "host/link/hot-symbols.txt: $(wc -l <"$root/host/link/hot-symbols.txt") functions"
# How many of the list's names each build defines now: the load harness compares its build
# against this and says when the list has gone stale (tests/src/load.rs, `hot_list`).
{
  echo "# Names of hot-symbols.txt each build defined when tests/scripts/hot-symbols.sh made it."
  for build in release alloc-count; do
    echo "$build $(awk 'NR == FNR { d[$0] = 1; next } ($0 in d)' "$work/syms-$build" \
      "$root/host/link/hot-symbols.txt" | wc -l)"
  done
} >"$root/host/link/hot-symbols.made"
cat "$root/host/link/hot-symbols.made"
