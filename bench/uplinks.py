#!/usr/bin/env python3
"""Who uploaded what, when, in a traced p2pshare run of swarm-bench.

Run the swarm with `RUST_LOG=p2pshare::swarm=trace` (see trace_timeline.py), then
`bench/uplinks.py /dev/shm/swarm-bench/runs/<run dir>`. From every downloader's
"stored ... from <peer>" lines it prints, per second after the first stored unit:
the units delivered by all downloaders together (to compare with what their uplinks
can carry: about 9 blocks of 64 KiB a second each at 5 mbit), the seeder's, the
first few peers' per 5 s, when each downloader got its first unit, and the seeder's
first 40 deliveries. Units are counted when stored, so a second's count is a
little late and bursty; sums over several seconds are what to read.
"""
import collections
import datetime
import glob
import os
import re
import sys

STORED = re.compile(r"^(\S+) .*stored \[(\d+)(?:\.\.(\d+))?\] of piece (\d+) from (\d+)")


def main(rundir):
    ev = []
    for path in glob.glob(os.path.join(rundir, "logs", "h*-peer.log")):
        host = int(re.search(r"h(\d+)-peer", path).group(1))
        for line in open(path, errors="replace"):
            m = STORED.match(line)
            if not m:
                continue
            t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
            a = int(m.group(2))
            b = int(m.group(3) or a)
            ev.append((t, host, int(m.group(5)), b - a + 1))
    if not ev:
        sys.exit(f"no 'stored' trace lines under {rundir}/logs (run with RUST_LOG=p2pshare::swarm=trace)")
    ev.sort()
    t0 = ev[0][0]
    seconds = int(ev[-1][0] - t0) + 1
    rate = collections.defaultdict(lambda: [0] * seconds)
    for t, _, src, n in ev:
        rate[src][int(t - t0)] += n
    seeder = min(rate)
    downloaders = [s for s in sorted(rate) if s != seeder]
    total = [sum(rate[s][i] for s in downloaders) for i in range(seconds)]
    print(f"units/s delivered by the {len(downloaders)} downloaders together:", total)
    print(f"units/s delivered by the seeder {seeder}:", rate[seeder])
    for s in sorted(rate)[:6]:
        print(f"{s} per 5 s:", [sum(rate[s][i:i + 5]) for i in range(0, seconds, 5)])
    first = {}
    for t, host, src, _ in ev:
        first.setdefault(host, (round(t - t0, 2), src))
    print("first unit per downloader (s, from):", sorted(first.values()))
    print("the seeder's first 40 deliveries (s):",
          [round(t - t0, 2) for t, _, src, _ in ev if src == seeder][:40])


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
