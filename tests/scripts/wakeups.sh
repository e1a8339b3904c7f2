#!/usr/bin/env bash
# How often a turn wakes the daemon's threads, and why: builds the daemon with frame pointers
# (its own target directory, `target/frame-pointers`), runs the load harness's overhead section
# (telemetry and the default plugins on), records for a few seconds of its 16-session row every
# futex call, write and context switch of the daemon with their call stacks (`perf`), and prints
# per turn (a turn: the prompt's write into an agent's pipe):
# - the runtime's workers woken, by how (their condvar, or the I/O driver's eventfd) and why (a
#   task that woke itself during its poll, requeued as a yield; or a task woken by another while
#   the waking worker had work of its own), with the tasks that woke themselves named;
# - the workers going to sleep (in `epoll_wait`, on the condvar);
# - glibc's internal lock woken (the allocator's arenas).
# BENCHMARKS.md, "Round eighteen", has what these counts showed. Needs perf (with tracepoints),
# objdump, readelf and python3; the first build takes about ten minutes, a capture about a minute.
#
# usage: tests/scripts/wakeups.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-3}
work=$(mktemp -d)
bin=$PWD/target/frame-pointers/release/acpd
bench=
# The harness stops at once (its remaining rows are not needed), and so do its daemons: a
# harness killed by a signal drops nothing, so they are ended here by their binary.
stop() {
  if [ -n "$bench" ]; then
    pkill -P "$bench" 2>/dev/null || true
    kill "$bench" 2>/dev/null || true
  fi
  pkill -f "$bin serve" 2>/dev/null || true
}
trap 'stop; rm -rf "$work"' EXIT

CARGO_TARGET_DIR=target/frame-pointers RUSTFLAGS="-C force-frame-pointers=yes" \
  cargo build -q --release -p acpd --features alloc-count
cargo bench -q -p acpd-tests --bench load --no-run
ACPD_BENCH_BIN=$bin ACPD_LOAD_MODES=plugins ACPD_LOAD_ONLY=overhead \
  cargo bench -q -p acpd-tests --bench load >"$work/bench.out" 2>&1 &
bench=$!
# The 16-session row starts a daemon of its own once the one-session row is reported.
for _ in $(seq 3000); do
  grep -q "@ 1 sessions" "$work/bench.out" 2>/dev/null && break
  sleep 0.1
done
grep -q "@ 1 sessions" "$work/bench.out" || { echo "the harness never reported its first row" >&2; exit 1; }
daemon=
for _ in $(seq 300); do
  daemon=$(pgrep -f "$bin serve" | tail -1 || true)
  [ -n "$daemon" ] && break
  sleep 0.1
done
[ -n "$daemon" ] || { echo "no daemon for the 16-session row" >&2; exit 1; }
# Past the row's warm-up turns.
sleep 1
perf record -q -g -o "$work/perf.data" -p "$daemon" \
  -e syscalls:sys_enter_futex -e syscalls:sys_enter_write -e sched:sched_switch \
  -- sleep "$secs" >/dev/null 2>&1
perf script -i "$work/perf.data" -F comm,event,trace,ip,sym,symoff 2>/dev/null >"$work/script.txt"
python3 - "$work/script.txt" "$bin" <<'PY'
import collections, re, subprocess, sys
script, binary = sys.argv[1:3]

# perf names code by its offset in the file; objdump by its virtual address. They differ by the
# executable segment's virtual address less its offset.
segs = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True).stdout
text_seg = next(l.split() for l in segs.splitlines() if l.strip().startswith("LOAD") and "R E" in l)
to_vaddr = int(text_seg[2], 16) - int(text_seg[1], 16)

def frames(lines):
    out = []
    for l in lines:
        m = re.match(r"\s*([0-9a-f]+) (.*?)(?:\+0x([0-9a-f]+))?$", l)
        if m:
            out.append((int(m.group(1), 16), m.group(2), int(m.group(3) or "0", 16)))
    return out

turns = 0
count = collections.Counter()
selfwoken = collections.Counter()  # each self-waking task's Harness::poll instance (vaddr)
for block in open(script).read().split("\n\n"):
    lines = block.strip().split("\n")
    if not lines or not lines[0].strip():
        continue
    head, fr = lines[0], frames(lines[1:])
    names = [n for _, n, _ in fr]
    text = "\n".join(names)
    how = None
    if "sys_enter_write" in head:
        if "Outbox::send_now" in text:
            turns += 1
        elif "mio::sys::unix::waker::Waker::wake" in text:
            how = "a worker woken through the I/O driver's eventfd"
    elif "sys_enter_futex" in head:
        m = re.search(r"op: (0x[0-9a-f]+)", head)
        if not m or int(m.group(1), 16) & 0x7F != 1:
            continue
        if "__lll_lock_wake_private" in text:
            count[("glibc's internal lock woken (the allocator's arenas)", "")] += 1
        elif "multi_thread" in text:
            how = "a worker woken on its condvar"
    elif "sched_switch" in head and re.search(r"prev_state=[SD]", head):
        if "epoll_wait" in text and "multi_thread" in text:
            count[("a worker went to sleep", "in epoll_wait (the I/O driver)")] += 1
        elif "park_condvar" in text:
            count[("a worker went to sleep", "on its condvar")] += 1
    if how:
        y = next((k for k, n in enumerate(names) if "yield_now" in n), None)
        if y is None:
            count[(how, "a task woken by another while the worker had work")] += 1
        else:
            count[(how, "a task that woke itself, requeued as a yield")] += 1
            if y + 1 < len(fr):  # the frame that called yield_now: the task's Harness::poll
                ip, _, off = fr[y + 1]
                selfwoken[ip - off + to_vaddr] += 1

if turns == 0:
    sys.exit("no turn seen: no prompt written into an agent's pipe")
print(f"{turns} turns; per turn:")
for (what, why), n in sorted(count.items()):
    print(f"  {n / turns:5.2f}  {what}{': ' + why if why else ''}")
if selfwoken:
    # A task is named by the future its Harness::poll instance drops when the task ends.
    print("  the tasks that woke themselves:")
    for start, n in selfwoken.most_common():
        body = subprocess.run(
            ["objdump", "-d", "--no-show-raw-insn", "-C", f"--start-address={start:#x}",
             f"--stop-address={start + 0x600:#x}", binary],
            capture_output=True, text=True).stdout
        m = re.search(r"drop_in_place<alloc::boxed::Box<tokio::runtime::task::core::Cell<(.{0,150})", body)
        print(f"  {n / turns:5.2f}  {m.group(1) if m else f'(a task at {start:#x})'}")
PY
