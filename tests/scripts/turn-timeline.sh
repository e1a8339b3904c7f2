#!/usr/bin/env bash
# Where a prompt's time goes between processes, from the kernel's view: runs the load harness's
# overhead section (telemetry and the default plugins on), records every system call and
# scheduler event of the machine for a few seconds of its one-session row with `perf`, and prints
# for each paced turn, from the moment the daemon read the POST: when it wrote the request into
# the agent's pipe, when the agent read it, when the agent first wrote back (its handler's first
# chunk), when the daemon wrote the 202, and how often the daemon's threads were switched out
# before the pipe write; then the medians over the turns, and on which CPUs the three processes
# ran (BENCHMARKS.md, "Round twelve": at low load this guest runs them all on one vCPU), and what
# the CPUs ran while the agent waited for one ("Round seventeen"); and, between the agent's read and
# its first write, how long its threads were preempted and when it first called futex ("Round
# twenty-three").
# Environment passes through, e.g. ACPD_LOAD_LIMITS=$'[agent]\nnice = 0'. Needs perf (with
# tracepoints) and python3; takes about a minute after the builds.
#
# With `16` as the second argument it captures the 16-session row instead (a daemon of its own):
# there the turns overlap, so it prints the POST's way in leg by leg (the harness's send, the
# daemon's read, the request in the pipe, the agent's read) and what the CPUs ran while the agent
# waited.
#
# usage: tests/scripts/turn-timeline.sh [seconds] [sessions: 1 or 16]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-3}
row=${2:-1}
case $row in 1 | 16) ;; *) echo "sessions: 1 or 16, not $row" >&2; exit 2 ;; esac
work=$(mktemp -d)
harness=
# The harness and the daemons it started (the agents end with their daemon): a harness killed
# by a signal drops nothing, so its children are ended here.
stop() {
  if [ -n "$harness" ]; then
    pkill -P "$harness" 2>/dev/null || true
    kill "$harness" 2>/dev/null || true
  fi
}
trap 'stop; rm -rf "$work"' EXIT

cargo bench -q -p acpd-tests --bench load --no-run
ACPD_LOAD_MODES=plugins ACPD_LOAD_ONLY=overhead cargo bench -q -p acpd-tests --bench load \
  >"$work/bench.out" 2>&1 &
# The one-session row starts once the harness's daemon has spawned the demo agent.
daemon= agent=
for _ in $(seq 1200); do
  harness=${harness:-$(pgrep -f 'deps/load-' | head -1 || true)}
  if [ -n "$harness" ]; then
    daemon=$(pgrep -P "$harness" -f 'acpd serve' | head -1 || true)
    [ -n "$daemon" ] && agent=$(pgrep -P "$daemon" -f 'acpd demo-agent' | head -1 || true)
  fi
  [ -n "$agent" ] && break
  sleep 0.1
done
[ -n "$agent" ] || { echo "the harness never started an agent" >&2; exit 1; }
if [ "$row" = 16 ]; then
  # The 16-session row starts a daemon of its own once the one-session row is reported.
  first=$daemon daemon= agent=
  for _ in $(seq 1200); do
    if grep -q "@ 1 sessions" "$work/bench.out"; then
      daemon=$(pgrep -P "$harness" -f 'acpd serve' | grep -vx "$first" | head -1 || true)
      [ -n "$daemon" ] && agent=$(pgrep -P "$daemon" -f 'acpd demo-agent' | head -1 || true)
    fi
    [ -n "$agent" ] && break
    sleep 0.1
  done
  [ -n "$agent" ] || { echo "the 16-session row never started an agent" >&2; exit 1; }
fi
sleep 2
perf record -q -o "$work/perf.data" -a \
  -e 'sched:sched_switch,sched:sched_wakeup,raw_syscalls:sys_enter,raw_syscalls:sys_exit' --exclude-perf \
  -- sleep "$secs" >/dev/null 2>&1
stop
perf script -i "$work/perf.data" -F comm,pid,tid,cpu,time,event,trace 2>/dev/null >"$work/events"

python3 - "$harness" "$daemon" "$agent" "$work/events" "$row" <<'EOF'
import bisect, collections, re, statistics, sys

harness, daemon, agent, path, row = sys.argv[1:6]
line = re.compile(r'\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s+(.*)')
# Every event of the machine, parsed once: (comm, pid, tid, cpu, time, event, its text).
machine = []
for text in open(path, errors="replace"):
    m = line.match(text)
    if m:
        comm, pid, tid, cpu, t, name, rest = m.groups()
        machine.append((comm, pid, tid, int(cpu), float(t), name, rest))
events, cpus = [], collections.Counter()
for comm, pid, tid, cpu, t, name, rest in machine:
    if pid in (harness, daemon, agent):
        cpus[(pid, cpu)] += 1
        events.append((pid, t, name, rest, tid))

READ, WRITE, WRITEV, RECVFROM = "0", "1", "20", "45"

def exit_of(e):
    # "NR <n> = <ret>"
    if e[2] != "raw_syscalls:sys_exit":
        return None, None
    p = e[3].split()
    return p[1], p[3]

# The harness's POST is 271 bytes ("bench 4", a uuid session and client id); the 202 is 236. The
# request the daemon writes into the pipe, and the agent reads, is the size the daemon writes
# and the agent reads most often (its id's length is the daemon's to choose). A turn ends at the
# next POST.
posts = [i for i, e in enumerate(events)
         if e[0] == daemon and exit_of(e) == (RECVFROM, "271")]
sizes = collections.Counter()
written = {exit_of(e)[1] for e in events if e[0] == daemon and exit_of(e)[0] == WRITE}
for e in events:
    nr, ret = exit_of(e)
    if e[0] == agent and nr == READ and ret in written and int(ret) > 200:
        sizes[ret] += 1
# Sizes a few bytes apart are the same request with an id of more digits.
top = int(sizes.most_common(1)[0][0]) if sizes else 368
REQUEST = {str(n) for n in range(top - 4, top + 5)}
# Every request in the pipe, and the agent's next read after it (at 16 sessions, another
# session's POST may come between a turn's POST and its pipe write).
reads = [e[1] for e in events if e[0] == agent and exit_of(e)[0] == READ and exit_of(e)[1] != "-11"]
gaps = sorted((reads[k] - e[1]) * 1e6 for e in events
              if e[0] == daemon and exit_of(e)[0] == WRITE and exit_of(e)[1] in REQUEST
              for k in [bisect.bisect_left(reads, e[1])] if k < len(reads))
marks = collections.defaultdict(list)
handled = []  # (the agent's read, its first write) of each turn seen whole
for n, i in enumerate(posts if row == "1" else []):
    t0 = events[i][1]
    end = events[posts[n + 1]][1] if n + 1 < len(posts) else t0 + 0.01
    got, switches = {}, 0
    for e in events[i:]:
        if e[1] >= end:
            break
        nr, ret = exit_of(e)
        if e[0] == daemon and nr == WRITE and ret in REQUEST:
            got.setdefault("pipe write", e[1])
        if e[0] == daemon and (nr, ret) == (WRITEV, "236"):
            got.setdefault("202 written", e[1])
        if e[0] == agent and nr == READ and ret in REQUEST:
            got.setdefault("agent read", e[1])
        # A line to its stdout; tokio's 8-byte eventfd writes (a worker waking another) are not.
        if e[0] == agent and nr == WRITE and int(ret) > 8 and "agent read" in got:
            got.setdefault("agent's first write", e[1])
        if e[0] == daemon and e[2] == "sched:sched_switch" and "pipe write" not in got:
            switches += 1
    if {"pipe write", "agent read"} <= got.keys():
        for k, v in got.items():
            marks[k].append((v - t0) * 1e6)
        marks["daemon switched out before the pipe write"].append(switches)
        if "agent's first write" in got:
            handled.append((got["agent read"], got["agent's first write"]))

if row == "1":
    print(f"{len(marks['pipe write'])} turns of {len(posts)} POSTs seen whole (request {top} bytes); µs after the daemon read the POST (median, p90):")
    for k in ("pipe write", "agent read", "agent's first write", "202 written",
              "daemon switched out before the pipe write"):
        v = sorted(marks.get(k, []))
        if v:
            print(f"  {k:45} {statistics.median(v):8.0f} {v[int(0.9 * (len(v) - 1))]:8.0f}")
# Scheduler events: a switch's (prev, its state, next's comm, next, next's priority), a
# wake-up's thread; each thread's process.
switch = re.compile(r'prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+) next_prio=(\d+)')
wakeup = re.compile(r'pid=(\d+) prio=\d+ target_cpu')
process = {tid: pid for _, pid, tid, *_ in machine}
agent_tids = {t for t, p in process.items() if p == agent}
if handled:
    # Between the agent's read and its first write (the ACP crate's parse and dispatch, the
    # handler, the writer task): how long its threads were runnable but not running, and its
    # first futex wake (the connection task, woken by itself, requeued as a yield that wakes a
    # parked worker: BENCHMARKS.md, "Round twenty-three").
    times = [m[4] for m in machine]
    waited, futex = [], []
    for t_read, t_write in handled:
        out, total, woke = {}, 0.0, None
        for k in range(bisect.bisect_right(times, t_read), len(machine)):
            comm, pid, tid, cpu, t, name, rest = machine[k]
            if t >= t_write:
                break
            if name == "sched:sched_switch" and (sw := switch.search(rest)):
                prev, state, _, nxt, _ = sw.groups()
                if prev in agent_tids and state.startswith("R"):
                    out[prev] = t
                if nxt in out:
                    total += t - out.pop(nxt)
            if woke is None and pid == agent and name == "raw_syscalls:sys_enter" and rest.startswith("NR 202 "):
                woke = t
        waited.append(total * 1e6)
        # A turn with no futex call before its first line counts up to that line.
        futex.append(((woke or t_write) - t_read) * 1e6)
    for k, v in (("agent read -> first write, preempted", waited),
                 ("agent read -> its first futex call", futex)):
        v.sort()
        print(f"  {k:45} {statistics.median(v):8.0f} {v[int(0.9 * (len(v) - 1))]:8.0f}")
if gaps:
    print(f"  {len(gaps)} requests in the pipe; µs to the agent's next read (median, p90): "
          f"{statistics.median(gaps):.0f} {gaps[int(0.9 * (len(gaps) - 1))]:.0f}")
if row == "16":
    # The POST's way in, leg by leg (each from one system call's return to the next's): the
    # harness's send, the daemon's read of it, the request in the pipe written by the thread
    # that read the POST (an admission runs in one task), the agent's read. Each POST is
    # followed to the next of each; a POST whose admission moved threads is left out. What
    # precedes the harness's send (its client building the request) has no system call.
    def exits(pid, nr, ok):
        # (time, thread) of each return of system call `nr` by `pid` whose result passes `ok`.
        return [(e[1], e[4]) for e in events
                if e[0] == pid and exit_of(e)[0] == nr and ok(exit_of(e)[1])]
    sent = exits(harness, WRITEV, lambda r: r == "271")
    got = exits(daemon, RECVFROM, lambda r: r == "271")
    piped = exits(daemon, WRITE, lambda r: r in REQUEST)
    read = [t for t, _ in exits(agent, READ, lambda r: r in REQUEST)]
    got_t = [t for t, _ in got]
    legs = collections.defaultdict(list)
    for t, _ in sent:
        k = bisect.bisect_left(got_t, t)
        if k == len(got_t):
            break
        t1, tid = got[k]
        t2 = next((w for w, wtid in piped if w > t1 and wtid == tid), None)
        if t2 is None or t2 - t1 > 0.01:
            continue
        k = bisect.bisect_left(read, t2)
        if k == len(read):
            continue
        legs["harness sent -> daemon read the POST"].append((t1 - t) * 1e6)
        legs["daemon read -> request in the pipe"].append((t2 - t1) * 1e6)
        legs["request in the pipe -> agent read it"].append((read[k] - t2) * 1e6)
        legs["harness sent -> agent read it"].append((read[k] - t) * 1e6)
    n = len(legs["harness sent -> agent read it"])
    print(f"  the POST's way in, {n} of {len(sent)} POSTs followed; µs (median, p90):")
    for k, v in legs.items():
        v.sort()
        print(f"    {k:42} {statistics.median(v):6.0f} {v[int(0.9 * (len(v) - 1))]:6.0f}")
for pid, name in ((harness, "harness"), (daemon, "daemon"), (agent, "agent")):
    per = {c: n for (p, c), n in cpus.items() if p == pid}
    print(f"  events of the {name} by CPU: {dict(sorted(per.items()))}")

# What the CPUs ran while one of the agent's threads was runnable but not running (woken, or
# preempted): time-weighted over the capture. "idle" is a CPU still idle after the wake-up (the
# vCPU waking); "(rt)" a thread at a real-time priority.
names = {harness: "harness", daemon: "daemon", agent: "agent's other threads", "0": "idle"}
waiting, running, on_cpu, last, held = set(), {}, {}, None, collections.Counter()
for _, _, _, cpu, t, name, rest in machine:
    if last is not None and waiting:
        for who in running.values():
            held[who] += t - last
    last = t
    if name == "sched:sched_wakeup":
        w = wakeup.search(rest)
        # A wake-up of a thread still on its CPU is traced too: it waits for nothing.
        if w and w.group(1) in agent_tids and w.group(1) not in on_cpu.values():
            waiting.add(w.group(1))
    elif name == "sched:sched_switch":
        s = switch.search(rest)
        if not s:
            continue
        prev, state, comm, nxt, prio = s.groups()
        if prev in agent_tids and state.startswith("R"):
            waiting.add(prev)
        waiting.discard(nxt)
        on_cpu[cpu] = nxt
        who = names.get(process.get(nxt, nxt), comm.split("/")[0])
        running[cpu] = who + (" (rt)" if int(prio) < 100 else "")
total = sum(held.values()) or 1
print("  while an agent thread waited for a CPU, the CPUs ran: "
      + ", ".join(f"{k} {v / total * 100:.0f} %" for k, v in held.most_common(6)))
EOF
