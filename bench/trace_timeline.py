#!/usr/bin/env python3
"""Timeline of a traced p2pshare run in swarm-bench: where the time between the
seeder's last new unit and the harness's last `done` goes.

Run the swarm with unit tracing, e.g.

    RUST_LOG=p2pshare::swarm=trace sudo -E bench/swarm.sh --n 16 --runs 1 \
        --clients p2pshare --no-install

then `bench/trace_timeline.py /dev/shm/swarm-bench/runs/<run dir>`. Times are seconds
after the first log line of any downloader (about 0.1 s after the harness's clock
starts). Prints the seeder's new units per second, each downloader's completion by
its own log (its last stored unit) next to the harness's `done_s`, and the fan-out
time of units (first arrival from the seeder to the last downloader that stored it)
by when they left the seeder, with the hop times of the last 20.

Tracing costs CPU, and the harness hashes finished copies on the same 2 cores, so a
traced run's harness times are a little worse than an untraced one's.
"""
import collections
import datetime
import glob
import json
import os
import re
import statistics
import sys

STORED = re.compile(r"stored \[(\d+)(?:\.\.(\d+))?\] of piece (\d+) from (\d+)")


def stamp(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def main(rundir):
    result = json.load(open(os.path.join(rundir, "result.json")))
    first_line, done, stores = {}, {}, collections.defaultdict(list)
    for path in sorted(glob.glob(os.path.join(rundir, "logs", "h*-peer.log"))):
        host = int(re.search(r"h(\d+)-peer", path).group(1))
        for line in open(path):
            if not line.startswith("20"):
                continue
            t = stamp(line.split()[0])
            first_line.setdefault(host, t)
            m = STORED.search(line)
            if m:
                a = int(m.group(1))
                b = int(m.group(2)) if m.group(2) else a + 1
                for u in range(a, b):
                    stores[u].append((t, host, int(m.group(4))))
                done[host] = t
    if not stores:
        sys.exit(f"{rundir}: no 'stored' trace lines (run with RUST_LOG=p2pshare::swarm=trace)")
    seed_id = min(f for v in stores.values() for _, _, f in v)  # peer IDs: seeder is 1000
    t0 = min(first_line.values())
    rows = []
    for u, got in stores.items():
        got.sort()
        from_seed = [g for g in got if g[2] == seed_id]
        start = from_seed[0][0] if from_seed else got[0][0]
        rows.append((start - t0, got[-1][0] - start, [g[0] - start for g in got[1:]]))
    rows.sort()
    left = [r[0] for r in rows]
    per_s = collections.Counter(int(x) for x in left)
    print(f"units {len(rows)}; first from the seeder at {left[0]:.3f} s, last new one at {left[-1]:.3f} s")
    print("new units from the seeder per second:", [per_s[k] for k in range(int(left[-1]) + 1)])
    ours = sorted(t - t0 for t in done.values())
    print("complete by the downloaders' own logs:", " ".join(f"{x:.2f}" for x in ours))
    print("harness done_s:", " ".join(f"{x:.2f}" for x in result["done_s"]), f"ratio {result['ratio']}")
    end = left[-1]
    for lo, hi in [(0, 5), (5, 10), (10, 20), (20, end - 1), (end - 1, end + 1)]:
        sel = [r[1] for r in rows if lo <= r[0] < hi]
        if sel:
            p90 = sorted(sel)[int(0.9 * len(sel))]
            print(f"left the seeder in [{lo:.0f}, {hi:.1f}) s: {len(sel)} units, fan-out median "
                  f"{statistics.median(sel):.2f} s, p90 {p90:.2f}, max {max(sel):.2f}")
    print("last 20 units: left the seeder at, fan-out, then each further holder's delay")
    for start, fan, hops in rows[-20:]:
        print(f"  {start:6.2f} +{fan:.2f}  " + " ".join(f"{h:.2f}" for h in hops))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} RUNDIR")
    main(sys.argv[1])
