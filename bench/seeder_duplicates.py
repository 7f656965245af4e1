#!/usr/bin/env python3
"""Units the seeder (peer 1000) delivered more than once, in a run traced with
`RUST_LOG=p2pshare::swarm=trace` (see trace_timeline.py).

    bench/seeder_duplicates.py /dev/shm/swarm-bench/runs/<run dir>

Prints the count, when the seeder's last new unit was stored, the store time of
every duplicate, and for the first 40 duplicates: each store from the seeder
(s, host) and each request to the seeder for that unit (s, host). Times are
seconds after the first store of any downloader.
"""
import collections
import datetime
import glob
import os
import re
import sys

rd=sys.argv[1]
def st(s): return datetime.datetime.fromisoformat(s.replace("Z","+00:00")).timestamp()
STORED=re.compile(r"^(\S+)\s.*stored \[(\d+)(?:\.\.(\d+))?\] of piece (\d+) from (\d+)")
REQ=re.compile(r"^(\S+)\s.*request (\d+) from 1000$")
t0=None; stores=collections.defaultdict(list); reqs=collections.defaultdict(list)
first=[]
for p in glob.glob(os.path.join(rd,"logs","h*-peer.log")):
    h=int(re.search(r"h(\d+)-peer",p).group(1))
    for line in open(p,errors="replace"):
        if not line[:4].isdigit(): continue
        m=STORED.match(line)
        if m:
            t=st(m.group(1)); first.append(t)
            if m.group(5)=="1000":
                a=int(m.group(2)); b=int(m.group(3) or a+1) if m.group(3) else a+1
                for u in range(a,b): stores[u].append((t,h))
            continue
        m=REQ.match(line)
        if m: reqs[int(m.group(2))].append((st(m.group(1)),h))
t0=min(first)
d=[u for u,v in stores.items() if len(v)>1]
tot=sum(len(v) for v in stores.values())
print(f"deliveries {tot}, distinct {len(stores)}, duplicates {tot-len(stores)}")
lastnew=max(min(v)[0] for v in stores.values())-t0
print(f"last new unit stored at {lastnew:.2f}")
dupt=sorted(sorted(v)[k][0]-t0 for v in stores.values() for k in range(1,len(v)))
print("duplicate store times:", [round(x,1) for x in dupt])
for u in sorted(d, key=lambda u: sorted(stores[u])[1][0])[:40]:
    s=sorted(stores[u]); r=sorted(reqs[u])
    print(u, [(round(t-t0,2),h) for t,h in s], [(round(t-t0,2),h) for t,h in r])
