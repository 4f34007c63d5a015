#!/usr/bin/env python3
"""Who held the CPU while a latency-critical thread waited to run.

Reads the text of `perf script -F comm,tid,cpu,time,event,trace` over a `perf sched record`
on standard input. For every wake-up of a critical thread (by default ringlog's shards,
ringlog-perf's shards and the kernel workers that complete direct writes and block
requests), it measures how long the thread waited before it ran, and charges each wait of
at least THRESHOLD_MS to the task that held the thread's CPU longest meanwhile.

    perf sched record -o sched.data -- sleep 10
    perf script -i sched.data -F comm,tid,cpu,time,event,trace | sched_stalls.py 0.5

Prints one line per culprit: the waits it caused, their total and longest, and the share of
the recorded time critical threads spent waiting on it. A produce request whose broker,
client or write completion waits 3 ms for a CPU is answered at least 3 ms late, so these
waits bound what the latency tail can be on the machine.
"""

import collections
import re
import sys

CRITICAL = re.compile(r"ringlog-shard|ringlog-perf|kworker/\d+:\d+(-dio|H)")
LINE = re.compile(r"\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s+(.*)")
SWITCH = re.compile(r"prev_comm=(.*?) prev_pid=\d+ .*==> next_comm=(.*?) next_pid=(\d+)")
WAKING = re.compile(r"comm=(.*?) pid=(\d+) prio=\d+ target_cpu=(\d+)")


def culprit_name(comm):
    """kworker/1:3-dio -> kworker-dio; thread names keep their prefix."""
    if comm.startswith("kworker/"):
        suffix = comm.split("-", 1)[1] if "-" in comm else ""
        return "kworker-" + suffix if suffix else "kworker"
    return comm


def main():
    threshold = float(sys.argv[1]) / 1000 if len(sys.argv) > 1 else 0.0005
    waking = {}  # pid -> time of its wake-up
    on_cpu = {}  # cpu -> (comm, since)
    runs = collections.defaultdict(list)  # cpu -> [(start, end, comm)]
    waits = []  # (waited, cpu, woken_at, ran_at)
    first = last = None
    for line in sys.stdin:
        match = LINE.match(line)
        if not match:
            continue
        _, _, cpu, time, event, rest = match.groups()
        cpu, time = int(cpu), float(time)
        first = time if first is None else first
        last = time
        if event == "sched:sched_waking":
            woken = WAKING.search(rest)
            if woken and CRITICAL.search(woken.group(1)):
                waking[woken.group(2)] = time
        elif event == "sched:sched_switch":
            switch = SWITCH.search(rest)
            if not switch:
                continue
            if cpu in on_cpu:
                comm, since = on_cpu[cpu]
                runs[cpu].append((since, time, comm))
            on_cpu[cpu] = (switch.group(2), time)
            woken_at = waking.pop(switch.group(3), None)
            if woken_at is not None:
                waits.append((time - woken_at, cpu, woken_at, time))
    if first is None:
        sys.exit("no sched events on standard input (perf sched record, then perf script)")
    span = last - first
    total = collections.Counter()
    count = collections.Counter()
    longest = collections.Counter()
    for waited, cpu, woken_at, ran_at in waits:
        if waited < threshold:
            continue
        held = collections.Counter()
        for start, end, comm in runs[cpu]:
            overlap = min(end, ran_at) - max(start, woken_at)
            if overlap > 0:
                held[culprit_name(comm)] += overlap
        culprit = held.most_common(1)[0][0] if held else "(unknown)"
        total[culprit] += waited
        count[culprit] += 1
        longest[culprit] = max(longest[culprit], waited)
    slow = sum(count.values())
    print(
        f"{span:.1f} s recorded: {len(waits)} wake-ups of critical threads, "
        f"{slow} waited >= {threshold * 1000:g} ms for a CPU"
    )
    for culprit, waited in total.most_common():
        print(
            f"  {culprit:28s} {count[culprit]:6d} waits  total {waited * 1000:8.1f} ms  "
            f"longest {longest[culprit] * 1000:6.2f} ms  ({100 * waited / span:.2f}% of the time)"
        )


if __name__ == "__main__":
    main()
