#!/usr/bin/python3
"""Loopback benchmark (no caps): 1 seeder + P downloaders on 127.0.0.1, p2pshare
(default and --strict) against aria2 and libtorrent (BitTorrent, opentracker on
127.0.0.1, the same settings as ../shared/swarm-bench's presets; libtorrent through
its lt_peer.py, with several connections per IP allowed, since every peer here is
127.0.0.1).  Run through bench/loopback.sh.

Per client run:
  wall_s   from starting the downloaders (the seeder is up and listening, and for
           aria2 announced) until the last downloader reported completion: p2pshare's
           event log line "has downloaded the complete file", aria2's
           --on-bt-download-complete hook, lt_peer.py's "COMPLETE" line.  Every copy's sha256 is checked afterwards
           (not timed); a wrong copy makes the run "corrupt".
  exit_s   p2pshare only: until every p2pshare process (seeder included) exited,
           i.e. the SPEC A5.6 termination.  aria2 seeds forever and is stopped by us.
  cpu_s    user+sys seconds of all processes of the run (getrusage via wait4):
           seeder + downloaders (+ opentracker for the BitTorrent clients).
  rss      peak RSS (ru_maxrss) of each process.
"""
import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

MARK = b"has downloaded the complete file"
ARIA2_COMMON = ["--seed-ratio=0.0", "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
                "--disable-ipv6=true", "--file-allocation=none", "--summary-interval=0",
                "--show-console-readout=false", "--console-log-level=notice", "--enable-rpc=false",
                "--bt-max-peers=0", "--check-certificate=false", "--auto-save-interval=0"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_size(s):
    s = s.strip().lower()
    for suf, mul in (("gib", 1 << 30), ("mib", 1 << 20), ("kib", 1 << 10), ("g", 1 << 30), ("m", 1 << 20),
                     ("k", 1 << 10), ("b", 1)):
        if s.endswith(suf):
            return int(float(s[:-len(suf)]) * mul)
    return int(s)


def fmt_size(n):
    for u, d in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= d and n % d == 0:
            return f"{n // d}{u}"
    return f"{n}B"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def listening(port):
    """True when something listens on TCP port (IPv4 or IPv6) - read from /proc."""
    for fn in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(fn) as f:
                next(f)
                for line in f:
                    p = line.split()
                    if p[3] == "0A" and int(p[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            pass
    return False


def bdecode_info_hash(data):
    """sha1 of the bencoded `info` value of a .torrent (as swarm-bench does)."""
    def skip(i):
        c = data[i:i + 1]
        if c == b"i":
            return data.index(b"e", i) + 1
        if c in (b"l", b"d"):
            i += 1
            while data[i:i + 1] != b"e":
                i = skip(i)
            return i + 1
        colon = data.index(b":", i)
        return colon + 1 + int(data[i:colon])
    i = 1
    while data[i:i + 1] != b"e":
        kend = skip(i)
        key = data[data.index(b":", i) + 1:kend]
        vend = skip(kend)
        if key == b"info":
            return hashlib.sha1(data[kend:vend]).hexdigest()
        i = vend
    raise ValueError("no info dict")


class Proc:
    """A child run under GNU time (`/usr/bin/time -v -o FILE`): the peak RSS must come
    from time's own fork, because ru_maxrss survives exec and a child forked straight
    from this Python process would start at Python's RSS.  CPU comes from wait4 on
    time (its rusage includes the reaped command)."""

    def __init__(self, name, argv, cwd, logpath, env=None):
        self.name, self.argv, self.logpath = name, argv, logpath
        self.statfile = logpath + ".time"
        self.logf = open(logpath, "ab")
        self.logf.write(("# " + " ".join(argv) + "\n").encode())
        self.logf.flush()
        self.p = subprocess.Popen(["/usr/bin/time", "-v", "-o", self.statfile] + argv, cwd=cwd, stdout=self.logf,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                  env=env)
        self.pid = self.p.pid
        self.rc = None
        self.ru = None
        self.exit_t = None
        self.maxrss_kib = None

    def reap(self, block=False):
        if self.rc is not None:
            return True
        pid, status, ru = os.wait4(self.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return False
        self.exit_t = time.monotonic()
        self.p.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
        self.ru = ru
        self.logf.close()
        self.rc = self.p.returncode
        try:
            with open(self.statfile) as f:
                for line in f:
                    line = line.strip()
                    if line.startswith("Maximum resident set size (kbytes):"):
                        self.maxrss_kib = int(line.rsplit(":", 1)[1])
                    elif line.startswith("Command terminated by signal"):
                        self.rc = -int(line.rsplit(" ", 1)[1])
                    elif line.startswith("Exit status:"):
                        self.rc = int(line.rsplit(":", 1)[1])
        except (FileNotFoundError, ValueError):
            pass
        return True

    def children(self):
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return []

    def signal(self, sig):
        """Signal the command, not time (time must survive to write its report)."""
        if self.rc is not None:
            return
        kids = self.children()
        try:
            if kids and sig != signal.SIGKILL:
                for k in kids:
                    os.kill(k, sig)
            else:
                os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    @property
    def cpu(self):
        return (self.ru.ru_utime + self.ru.ru_stime) if self.ru else 0.0

    @property
    def rss_mib(self):
        return (self.maxrss_kib or 0) / 1024


def stop(procs, grace=10.0):
    for p in procs:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not all(p.reap() for p in procs):
        time.sleep(0.05)
    for p in procs:
        if p.rc is None:
            p.signal(signal.SIGKILL)
            p.reap(block=True)


class LogWatch:
    """Reads a p2pshare event log incrementally, looking for the completion line."""

    def __init__(self, path):
        self.path, self.off, self.tail = path, 0, b""

    def done(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.off)
                data = f.read()
        except FileNotFoundError:
            return False
        self.off += len(data)
        buf = self.tail + data
        self.tail = buf[-len(MARK):]
        return MARK in buf


def wait_port(port, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.reap():
            return False
        if listening(port):
            return True
        time.sleep(0.05)
    return False


def drop_page_cache():
    """Writes dirty pages out and drops clean ones (root only), so the seeder's file is
    read from the disk during the run, not from memory."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
    except OSError as e:
        raise RuntimeError(f"--cold: cannot drop the page cache ({e}); run as root") from e


def run_p2pshare(a, client, rdir, payload, name, size):
    strict = client.startswith("p2pshare-strict")
    n = a.peers
    ports = [a.port_base + j for j in range(n + 1)]
    busy = [p for p in ports if listening(p)]
    if busy:
        raise RuntimeError(f"ports already in use: {busy} (use --port-base)")
    k = a.k or n
    with open(os.path.join(rdir, "Common.cfg"), "w") as f:
        f.write(f"NumberOfPreferredNeighbors {k}\nUnchokingInterval {a.unchoke}\n"
                f"OptimisticUnchokingInterval {a.optimistic}\nFileName {name}\nFileSize {size}\n"
                f"PieceSize {a.piece}\n")
    with open(os.path.join(rdir, "PeerInfo.cfg"), "w") as f:
        for j in range(n + 1):
            f.write(f"{1000 + j} 127.0.0.1 {ports[j]} {1 if j == 0 else 0}\n")
    os.makedirs(os.path.join(rdir, "peer_1000"))
    shutil.copyfile(payload, os.path.join(rdir, "peer_1000", name))
    # The manifest (BLAKE3 per piece) is made before the clock starts, as the .torrent
    # is for aria2; with it every peer verifies each piece it receives.
    if not a.no_manifest:
        subprocess.run([os.path.join(os.path.dirname(a.bin), "p2pshare"), "manifest",
                        "--dir", rdir], check=True, stdout=subprocess.DEVNULL)
    args = ["--strict"] if strict else []
    if not strict and a.pipeline_depth:
        args += ["--pipeline-depth", str(a.pipeline_depth)]
    args += a.p2p_args.split()
    env = dict(os.environ, NO_COLOR="1")
    logs = os.path.join(rdir, "stderr")
    os.makedirs(logs)

    def start(j):
        return Proc(f"{1000 + j}", [a.bin, str(1000 + j), "--dir", rdir] + args, rdir,
                    os.path.join(logs, f"peer_{1000 + j}.err"), env)

    if a.cold:
        drop_page_cache()
    seed = start(0)
    procs = [seed]
    try:
        if not wait_port(ports[0], seed, 30):
            raise RuntimeError(f"p2pshare seeder not listening on {ports[0]} (rc={seed.rc}); see {seed.logpath}")
        t0 = time.monotonic()
        peers = [start(j) for j in range(1, n + 1)]
        procs += peers
        watches = [LogWatch(os.path.join(rdir, f"log_peer_{1000 + j}.log")) for j in range(1, n + 1)]
        done_at = [None] * n
        status, deadline = "ok", t0 + a.timeout
        while True:
            for j, w in enumerate(watches):
                if done_at[j] is None and w.done():
                    done_at[j] = time.monotonic() - t0
            for p in procs:
                p.reap()
            if all(p.rc is not None for p in procs):
                for j, w in enumerate(watches):  # one last look
                    if done_at[j] is None and w.done():
                        done_at[j] = time.monotonic() - t0
                break
            lost = [p for j, p in enumerate(peers) if p.rc not in (None, 0) and done_at[j] is None]
            if lost or seed.rc not in (None, 0):
                # a peer died without its copy: the others could wait long; stop here
                status = "failed: " + ",".join(f"{p.name} rc={p.rc}" for p in procs if p.rc not in (None, 0))
                break
            now = time.monotonic()
            if all(d is not None for d in done_at) and now - t0 - max(done_at) > a.exit_grace:
                break  # every copy is there; whoever has not exited by now is reported as hung
            if now > deadline:
                status = "timeout"
                break
            time.sleep(a.poll)
        exits = [p.exit_t - t0 for p in procs if p.exit_t is not None]
        exit_s = max(exits) if len(exits) == len(procs) else None
        exit_info = {p.name: ("hung" if p.rc is None else p.rc) for p in procs}
    finally:
        stop(procs)
    outs = [os.path.join(rdir, f"peer_{1000 + j}", name) for j in range(1, n + 1)]
    return dict(status=status, done=done_at, exit_s=exit_s, procs=procs, outs=outs, exit_info=exit_info)


LT_PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "swarm-bench",
                       "lt_peer.py")


def run_aria2(a, client, rdir, payload, name, size):
    """aria2 or libtorrent (`client`), both through opentracker."""
    n = a.peers
    ports = [a.port_base + 100 + j for j in range(n + 1)]
    tport = a.port_base + 200
    busy = [p for p in ports + [tport] if listening(p)]
    if busy:
        raise RuntimeError(f"ports already in use: {busy} (use --port-base)")
    hdirs = [os.path.join(rdir, f"h{j}") for j in range(n + 1)]
    for d in hdirs:
        os.makedirs(d)
    seed_file = os.path.join(hdirs[0], name)
    shutil.copyfile(payload, seed_file)
    logs = os.path.join(rdir, "stderr")
    os.makedirs(logs)
    tracker = f"http://127.0.0.1:{tport}/announce"
    torrent = os.path.join(rdir, name + ".torrent")
    subprocess.run(["mktorrent", "-a", tracker, "-l", str(a.piece.bit_length() - 1), "-o", torrent, seed_file],
                   check=True, stdout=subprocess.DEVNULL)
    with open(torrent, "rb") as f:
        ih = bdecode_info_hash(f.read())
    trd = os.path.join(rdir, "tracker")  # opentracker chroots here (Debian's is whitelist-only)
    os.makedirs(trd)
    with open(os.path.join(trd, "whitelist.txt"), "w") as f:
        f.write(ih + "\n")
    with open(os.path.join(rdir, "opentracker.conf"), "w") as f:
        f.write("access.whitelist /whitelist.txt\n")
    os.chmod(trd, 0o755)
    os.chmod(rdir, 0o755)
    hook = os.path.join(rdir, "done-hook.sh")
    with open(hook, "w") as f:
        f.write('#!/bin/sh\n: > "$3.done"\n')  # aria2 passes GID, file count, first file path
    os.chmod(hook, 0o755)
    procs = []
    try:
        tr = Proc("opentracker", ["opentracker", "-i", "127.0.0.1", "-p", str(tport), "-P", str(tport),
                                  "-f", os.path.join(rdir, "opentracker.conf"), "-d", trd, "-u", "nobody"],
                  rdir, os.path.join(logs, "tracker.err"))
        procs.append(tr)
        if not wait_port(tport, tr, 10):
            raise RuntimeError(f"opentracker did not start (rc={tr.rc}); see {tr.logpath}")
        time.sleep(0.3)  # the whitelist is loaded by a background thread

        lt = client == "libtorrent"
        ready = os.path.join(rdir, "seed.ready")

        def start(j):
            if lt:
                argv = ["/usr/bin/python3", LT_PEER, "--torrent", torrent, "--save", hdirs[j], "--ip", "127.0.0.1",
                        "--port", str(ports[j]), "--set", "allow_multiple_connections_per_ip=true"]
                if j == 0:
                    argv += ["--seed", "--ready-file", ready]
            else:
                argv = ["aria2c", f"--dir={hdirs[j]}", f"--listen-port={ports[j]}"] + ARIA2_COMMON
                if j == 0:
                    argv += ["--bt-seed-unverified=true", "--check-integrity=false"]
                else:
                    argv += [f"--on-bt-download-complete={hook}"]
                argv += a.aria2_args.split() + [torrent]
            return Proc("seed" if j == 0 else f"peer{j}", argv, hdirs[j], os.path.join(logs, f"{client}-{j}.err"))

        seed = start(0)
        procs.append(seed)
        if not wait_port(ports[0], seed, 60):
            raise RuntimeError(f"{client} seeder not listening (rc={seed.rc}); see {seed.logpath}")
        if lt:  # seeding after its hash check, and announced (lt_peer.py's ready file)
            until = time.monotonic() + 120
            while not os.path.exists(ready) and time.monotonic() < until and not seed.reap():
                time.sleep(0.1)
            if not os.path.exists(ready):
                raise RuntimeError(f"libtorrent seeder never ready (rc={seed.rc}); see {seed.logpath}")
        else:
            time.sleep(1.0)  # as swarm-bench's preset: let the seeder announce
        t0 = time.monotonic()
        peers = [start(j) for j in range(1, n + 1)]
        procs += peers
        outs = [os.path.join(hdirs[j], name) for j in range(1, n + 1)]
        done_at = [None] * n
        status, deadline = "ok", t0 + a.timeout

        def complete(j):
            if not lt:
                return os.path.exists(outs[j] + ".done")
            with open(peers[j].logpath, "rb") as f:
                return b" COMPLETE" in f.read()

        while True:
            for j in range(n):
                if done_at[j] is None and complete(j):
                    done_at[j] = time.monotonic() - t0
            if all(d is not None for d in done_at):
                break
            dead = [p for p in procs if p.reap()]
            if dead:
                status = "failed: " + ",".join(f"{p.name} rc={p.rc}" for p in dead)
                break
            if time.monotonic() > deadline:
                status = "timeout"
                break
            time.sleep(a.poll)
    finally:
        stop(procs)
    return dict(status=status, done=done_at, exit_s=None, procs=procs, outs=outs, exit_info=None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="peerProcess binary")
    ap.add_argument("--version", default="?")
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--peers", type=int, default=7)
    ap.add_argument("--data-dir", default="/dev/shm")
    ap.add_argument("--clients", default="p2pshare p2pshare-strict aria2 libtorrent")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--k", type=int, default=0)
    ap.add_argument("--unchoke", type=int, default=1)
    ap.add_argument("--optimistic", type=int, default=2)
    ap.add_argument("--piece", default="256KiB")
    ap.add_argument("--pipeline-depth", type=int, default=0)
    ap.add_argument("--p2p-args", default="")
    ap.add_argument("--aria2-args", default="")
    ap.add_argument("--port-base", type=int, default=0, help="0 = random in 10000 .. below the ephemeral port range")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--exit-grace", type=float, default=30.0,
                    help="p2pshare: seconds after the last copy completed for every peer to exit")
    ap.add_argument("--cold", action="store_true",
                    help="p2pshare: drop the page cache just before the seeder starts (root; "
                         "with --no-manifest and --data-dir on a disk the seeder then reads "
                         "its file from the disk during the run)")
    ap.add_argument("--no-manifest", action="store_true",
                    help="p2pshare: run without a manifest (no piece verification)")
    ap.add_argument("--poll", type=float, default=0.05)
    ap.add_argument("--logs", required=True, help="where run logs are kept")
    ap.add_argument("--json", default="")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    a.size = parse_size(a.size)
    a.piece = parse_size(a.piece)
    if not a.port_base:
        import random
        # Below the kernel's ephemeral range: a port in it can be taken as the source
        # port of a peer's outgoing connection before a later peer listens on it
        # ("Address already in use", seen once in 13 runs).
        lo = 32768
        try:
            with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
                lo = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
        a.port_base = random.randrange(10000, max(10010, lo - 300), 10)
    log(f"== ports: p2pshare {a.port_base}+, aria2/libtorrent {a.port_base + 100}+, tracker {a.port_base + 200}")
    clients = a.clients.split()
    for c in clients:
        if c not in ("p2pshare", "p2pshare-strict", "aria2", "libtorrent"):
            raise SystemExit(f"unknown client {c}")
    if {"aria2", "libtorrent"} & set(clients) and a.piece & (a.piece - 1):
        raise SystemExit("aria2 and libtorrent need a power-of-two --piece (torrent piece size)")

    base = os.path.join(a.data_dir, f"p2pshare-loopback-{os.getpid()}")
    os.makedirs(base)
    os.chmod(base, 0o755)
    results = []
    try:
        name = f"payload-{a.size}.bin"
        payload = os.path.join(base, name)
        log(f"== payload {fmt_size(a.size)} of random bytes at {payload}")
        with open(payload, "wb") as f:
            left = a.size
            while left:
                k = min(left, 4 << 20)
                f.write(os.urandom(k))
                left -= k
        psha = sha256_file(payload)
        for r in range(1, a.runs + 1):
            for c in clients:
                rdir = os.path.join(base, f"{c}-r{r}")
                os.makedirs(rdir)
                log(f"-- run {r}/{a.runs}: {c}, 1 seeder + {a.peers} downloaders, {fmt_size(a.size)}")
                try:
                    bt = c in ("aria2", "libtorrent")
                    res = (run_aria2 if bt else run_p2pshare)(a, c, rdir, payload, name, a.size)
                except Exception as e:  # setup failure: record it and go on
                    log(f"   {c}: {e}")
                    res = dict(status=f"error: {e}", done=[None] * a.peers, exit_s=None, procs=[], outs=[],
                               exit_info=None)
                bad = []
                for j, out in enumerate(res["outs"], 1):
                    try:
                        ok = sha256_file(out) == psha
                    except FileNotFoundError:
                        ok = False
                    if not ok:
                        bad.append(j)
                if res["status"] == "ok" and bad:
                    res["status"] = f"corrupt: downloaders {bad}"
                procs = res["procs"]
                row = {
                    "client": c, "run": r, "peers": a.peers, "size": a.size, "piece": a.piece,
                    "version": a.version if c.startswith("p2pshare") else c,
                    "status": res["status"], "wrong_copies": bad,
                    "wall_s": round(max(res["done"]), 3) if all(d is not None for d in res["done"]) else None,
                    "first_s": round(min(d for d in res["done"] if d is not None), 3)
                    if any(d is not None for d in res["done"]) else None,
                    "exit_s": round(res["exit_s"], 3) if res["exit_s"] is not None else None,
                    "cpu_s": round(sum(p.cpu for p in procs), 2),
                    # p2pshare: how each process ended before we stopped the rest (SPEC A5.6)
                    "exit_info": res["exit_info"],
                    "exited_ok": sum(1 for v in res["exit_info"].values() if v == 0) if res["exit_info"] else None,
                    "procs": [{"name": p.name, "rc": p.rc, "cpu_s": round(p.cpu, 2), "rss_mib": round(p.rss_mib, 1)}
                              for p in procs],
                }
                results.append(row)
                log(f"   {c}: status={row['status']} wall={row['wall_s']}s exit={row['exit_s']}s exits={row['exit_info']} "
                    f"cpu={row['cpu_s']}s rss_max={max([p.rss_mib for p in procs] or [0]):.1f}MiB")
                # keep logs, drop data
                keep = os.path.join(a.logs, f"{c}-r{r}")
                os.makedirs(keep, exist_ok=True)
                for root, dirs, files in os.walk(rdir):
                    for fn in files:
                        if fn.endswith((".log", ".err", ".time", ".cfg", ".conf", ".torrent")):
                            rel = os.path.relpath(os.path.join(root, fn), rdir)
                            os.makedirs(os.path.dirname(os.path.join(keep, rel)), exist_ok=True)
                            shutil.copyfile(os.path.join(root, fn), os.path.join(keep, rel))
                if not a.keep:
                    shutil.rmtree(rdir, ignore_errors=True)
                if a.json:
                    with open(a.json, "a") as f:
                        f.write(json.dumps(row) + "\n")
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            log(f"kept data in {base}")
    report(results, a)
    if any(r["status"] != "ok" for r in results):
        return 2
    if any(r["exit_info"] and any(v != 0 for v in r["exit_info"].values()) for r in results):
        return 3
    return 0


def report(results, a):
    def med(rows, key):
        v = [r[key] for r in rows if r["status"] == "ok" and r[key] is not None]
        return statistics.median(v) if v else None

    by = {}
    for r in results:
        by.setdefault(r["client"], []).append(r)
    ref_wall = med(by.get("aria2", []), "wall_s")
    ref_cpu = med(by.get("aria2", []), "cpu_s")
    print(f"loopback: 1 seeder + {a.peers} downloaders, {fmt_size(a.size)}, piece {fmt_size(a.piece)}, "
          f"{os.cpu_count()} cores, data in {a.data_dir}; medians over ok runs")
    print(f"{'client':<18} {'ok':>5} {'wall_s':>8} {'vs_aria2':>8} {'exit_s':>7} {'exited':>7} {'MB/s':>7} "
          f"{'cpu_s':>7} {'vs_aria2':>8} {'rss_seed':>8} {'rss_peer_max':>12}  (RSS in MiB)")
    for c, rows in by.items():
        ok = [r for r in rows if r["status"] == "ok"]
        w, cpu, ex = med(rows, "wall_s"), med(rows, "cpu_s"), med(rows, "exit_s")
        if w is None:
            print(f"{c:<18} {len(ok):>2}/{len(rows):<2} " + "; ".join(sorted({r['status'] for r in rows})))
            continue
        bt = c in ("aria2", "libtorrent")  # procs[0] is opentracker
        seed_rss = statistics.median(r["procs"][1 if bt else 0]["rss_mib"] for r in ok)
        peer_rss = statistics.median(max(p["rss_mib"] for p in r["procs"][(2 if bt else 1):]) for r in ok)
        mbps = a.peers * a.size / w / 1e6
        exited = "-" if ok[0]["exit_info"] is None else \
            f"{sum(r['exited_ok'] for r in ok)}/{sum(len(r['exit_info']) for r in ok)}"
        print(f"{c:<18} {len(ok):>2}/{len(rows):<2} {w:>8.2f} {w / ref_wall if ref_wall else float('nan'):>8.3f} "
              f"{(f'{ex:.2f}' if ex is not None else '-'):>7} {exited:>7} {mbps:>7.0f} {cpu:>7.1f} "
              f"{cpu / ref_cpu if ref_cpu else float('nan'):>8.3f} {seed_rss:>8.1f} {peer_rss:>12.1f}")
    print()
    print("peak RSS per process, MiB (last ok run of each client; aria2 and libtorrent rows start with opentracker):")
    for c, rows in by.items():
        ok = [r for r in rows if r["status"] == "ok"] or rows
        r = ok[-1]
        print(f"  {c:<18} " + " ".join(f"{p['name']}={p['rss_mib']:.0f}" for p in r["procs"]))
    print("CPU seconds per process (same run; a hung peer is stopped after --exit-grace):")
    for c, rows in by.items():
        ok = [r for r in rows if r["status"] == "ok"] or rows
        r = ok[-1]
        print(f"  {c:<18} " + " ".join(f"{p['name']}={p['cpu_s']:.1f}" for p in r["procs"]))
    hung = [r for r in results if r["exit_info"] and any(v != 0 for v in r["exit_info"].values())]
    if hung:
        print(f"p2pshare peers that did not exit 0 within --exit-grace {a.exit_grace:g}s of the last completion:")
        for r in hung:
            print(f"  {r['client']} run {r['run']}: " + " ".join(f"{k}={v}" for k, v in r["exit_info"].items() if v != 0)
                  + f"  (logs: {a.logs}/{r['client']}-r{r['run']}/)")
    bad = [r for r in results if r["status"] != "ok"]
    if bad:
        print("runs not ok (logs under " + a.logs + "):")
        for r in bad:
            print(f"  {r['client']} run {r['run']}: {r['status']}  wall={r['wall_s']}s wrong_copies={r['wrong_copies']} rc: "
                  + " ".join(f"{p['name']}={p['rc']}" for p in r["procs"]))


if __name__ == "__main__":
    sys.exit(main())
