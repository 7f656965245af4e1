#!/usr/bin/env python3
"""How long after the harness's clock starts the first peerProcess starts.

swarm-bench takes its time zero, then starts every downloader's command at once (here
`bench/p2p_host.sh`, which writes the configs and execs peerProcess); whatever the
launcher spends before the exec is measured as transfer time. This starts N copies of
a launcher the same way, with a stub in place of peerProcess that records when it
started, and prints the first, 4th and last start after time zero.

    bench/launch_time.py [--n 16] [--rounds 3] [--script bench/p2p_host.sh]

No root or network namespaces needed: the launcher only writes files in its dir.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="downloaders started at once")
    ap.add_argument("--rounds", type=int, default=3)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--script", default=os.path.join(here, "p2p_host.sh"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        stub = os.path.join(root, "peerProcess")
        with open(stub, "w") as f:
            f.write('#!/bin/sh\ndate +%s.%N > "started.$1"\n')
        os.chmod(stub, 0o755)
        # The manifest the seeder's host would have written next to the payload.
        with open(os.path.join(root, "payload.bin.p2pmanifest"), "w") as f:
            f.write("stub\n")
        for i in range(1, a.n + 1):
            os.makedirs(os.path.join(root, f"h{i}"))
        for r in range(a.rounds):
            t0 = time.time()
            procs = []
            for i in range(1, a.n + 1):
                d = os.path.join(root, f"h{i}")
                peers = ",".join(f"10.77.0.{10 + j}" for j in range(a.n + 1) if j != i)
                args = [a.script, stub, str(i), str(a.n), f"10.77.0.{10 + i}", peers, "7000",
                        "payload.bin", "67108864", d, os.path.join(root, "payload.bin"),
                        str(a.n), "1", "2", "262144"]
                procs.append(subprocess.Popen(args, cwd=d))
            if any(p.wait() != 0 for p in procs):
                sys.exit("a launcher failed")
            starts = []
            for i in range(1, a.n + 1):
                path = os.path.join(root, f"h{i}", f"started.{1000 + i}")
                with open(path) as f:
                    starts.append(float(f.read()) - t0)
                os.remove(path)
            starts.sort()
            print(f"round {r + 1}: first peerProcess at {starts[0]:.3f} s, "
                  f"4th {starts[min(3, len(starts) - 1)]:.3f} s, last {starts[-1]:.3f} s")


if __name__ == "__main__":
    main()
