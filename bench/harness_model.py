#!/usr/bin/env python3
"""What swarm-bench's completion poll adds to the downloaders' own completion times.

swarm-bench's main loop polls the copies in host order, dates a copy at the start of
its own poll, and hashes each newly complete copy (sha256 of the whole file) before it
polls the next; then sleeps `--poll` (0.2 s). Copies that finish close together
therefore get dates one hash apart: 16 copies of 64 MiB finishing at once are dated
over about 0.8 s on a machine that hashes 64 MiB in 0.053 s. This replays that loop
for given true completion times (e.g. the "complete by the downloaders' own logs"
line of `trace_timeline.py`) in three orders over hosts: random (median over many
shuffles and poll phases), ascending (host 1 first), descending.

It also prints the floor no order or spread can beat: every copy but the last-dated
one is hashed before that one's date, and no hash starts before the first copy is
complete, so the last date is at least first completion + (N - 1) x hash. With
`--t-min` it turns that into the latest first completion a target ratio allows.

    bench/harness_model.py 28.63 28.74 28.75 ... [--hash 0.053] [--poll 0.2]

Measure --hash on the machine: `python3 -c 'import hashlib,time; d=bytes(64<<20);
t=time.time(); hashlib.sha256(d).digest(); print(time.time()-t)'`.
"""
import argparse
import random
import statistics


def dated(times_by_host, hash_s, poll_s, start, cheap=0.002):
    """The date swarm-bench gives the last copy: the loop of `cmd_run`'s watches."""
    done, t = {}, start
    while len(done) < len(times_by_host):
        for host in sorted(times_by_host):
            if host in done:
                continue
            if times_by_host[host] <= t:
                done[host] = t
                t += hash_s
            else:
                t += cheap
        t += poll_s
    return max(done.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("times", type=float, nargs="+", help="true completion times, s")
    ap.add_argument("--hash", type=float, default=0.053, help="seconds to hash one copy")
    ap.add_argument("--poll", type=float, default=0.2, help="swarm-bench --poll")
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--t-min", type=float, help="Kumar-Ross bound, s (prints what a ratio needs)")
    ap.add_argument("--target", type=float, default=1.10, help="ratio for --t-min [1.10]")
    a = ap.parse_args()
    times = sorted(a.times)
    n = len(times)
    orders = {
        "random": None,
        "ascending (host 1 first)": list(range(1, n + 1)),
        "descending (host N first)": list(range(n, 0, -1)),
    }
    print(f"last true completion {times[-1]:.3f} s, first {times[0]:.3f} s")
    floor = times[0] + (n - 1) * a.hash
    print(f"floor, any order and spread: first + {n - 1} x {a.hash} s = {floor:.3f} s")
    if a.t_min:
        print(f"ratio {a.target} of {a.t_min} s needs the first copy complete by "
              f"{a.t_min * a.target - (n - 1) * a.hash:.3f} s (this floor's ratio: "
              f"{floor / a.t_min:.3f})")
    for name, hosts in orders.items():
        out = []
        for k in range(a.trials):
            rng = random.Random(k)
            # The loop's phase against the completions is arbitrary.
            start = times[0] - rng.uniform(0, a.poll + 0.05) - 1.0
            order = hosts or rng.sample(range(1, n + 1), n)
            out.append(dated(dict(zip(order, times)), a.hash, a.poll, start))
        med = statistics.median(out)
        print(f"{name:>26}: harness dates the last copy at {med:.3f} s "
              f"(+{med - times[-1]:.3f} s after the last true completion)")


if __name__ == "__main__":
    main()
