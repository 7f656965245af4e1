#!/bin/bash
# p2pshare in ../shared/swarm-bench: 1 seeder + N downloaders in network namespaces,
# every host behind an upload cap, timed against the Kumar-Ross bound and compared
# with the aria2 / libtorrent presets.  See bench/README.md.
set -u
source "$(dirname "$0")/common.sh"

usage() {
  cat <<'EOF'
usage: bench/swarm.sh [options]
  --n "4 8 16"          swarm sizes (downloaders); default "4 8 16"
  --runs K              runs per (client, N), clients interleaved; default 3
  --size 64MiB          payload size (swarm-bench --size); default 64MiB
  --rate 20mbit         upload cap of every host (swarm-bench up --rate); default 20mbit
  --seed-rate R         the seeder's upload cap instead (heterogeneous caps)
  --down-rate R         download cap of every host (default: none)
  --host-rates "R ..."  downloaders' upload caps, cycled over hosts 1..N (e.g. "10mbit 40mbit"
                        alternates); T_min uses them (the harness's state is updated)
  --seeders K           hosts 0..K-1 start with the file (default 1); T_min and ratio are
                        recomputed for K seeders, the ratio against one seeder is kept too
  --clients "..."       any of: p2pshare p2pshare-strict aria2 libtorrent http
                        default "p2pshare p2pshare-strict aria2 libtorrent"
  --k K                 NumberOfPreferredNeighbors; default N (every neighbour unchoked)
  --unchoke S           UnchokingInterval seconds; default 1
  --optimistic S        OptimisticUnchokingInterval seconds; default 2
  --piece SIZE          PieceSize (and the torrent piece size when a power of 2); default 256KiB
  --pipeline-depth N    passed to the p2pshare (non-strict) variant; default: p2pshare's own
  --p2p-args "..."      more peerProcess arguments for both p2pshare variants
  --tag SUFFIX          appended to the p2pshare labels (e.g. -pd16) to compare builds/options
  --port P              peer port (default 7000)
  --timeout S           per run (default: swarm-bench's max(120, 3*N*F/u_s))
  --quiet-wait S        swarm-bench --quiet-wait (default 60)
  --json FILE           JSON lines of this invocation (default /dev/shm/swarm-bench/p2pshare-<stamp>.jsonl)
  --keep                keep payload copies in the run dirs
  --force               tear down an existing swarm-bench testbed instead of refusing
  --no-install          do not apt-get anything
  --no-build            use target/release as it is (no cargo build)
  -v                    per-peer progress every second
EOF
}

NS_LIST="4 8 16" RUNS=3 SIZE=64MiB RATE=20mbit SEED_RATE="" DOWN_RATE="" HOST_RATES="" SEEDERS=1
CLIENTS="p2pshare p2pshare-strict aria2 libtorrent"
K="" UNCHOKE=1 OPTIMISTIC=2 PIECE=256KiB PDEPTH="" P2P_ARGS="" TAG="" PORT=7000
TIMEOUT="" QUIET_WAIT="" JSON="" KEEP="" FORCE="" NO_INSTALL="" VERBOSE=""
while [ $# -gt 0 ]; do
  case $1 in
    --n) NS_LIST=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --seed-rate) SEED_RATE=$2; shift ;;
    --down-rate) DOWN_RATE=$2; shift ;;
    --host-rates) HOST_RATES=$2; shift ;;
    --seeders) SEEDERS=$2; shift ;;
    --clients) CLIENTS=$2; shift ;;
    --k) K=$2; shift ;;
    --unchoke) UNCHOKE=$2; shift ;;
    --optimistic) OPTIMISTIC=$2; shift ;;
    --piece) PIECE=$2; shift ;;
    --pipeline-depth) PDEPTH=$2; shift ;;
    --p2p-args) P2P_ARGS=$2; shift ;;
    --tag) TAG=$2; shift ;;
    --port) PORT=$2; shift ;;
    --timeout) TIMEOUT=$2; shift ;;
    --quiet-wait) QUIET_WAIT=$2; shift ;;
    --json) JSON=$2; shift ;;
    --keep) KEEP=1 ;;
    --force) FORCE=1 ;;
    --no-install) NO_INSTALL=1 ;;
    --no-build) NO_BUILD=1 ;;
    -v) VERBOSE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option $1" >&2; usage >&2; exit 64 ;;
  esac
  shift
done

need_root
for c in $CLIENTS; do
  case $c in p2pshare|p2pshare-strict|aria2|libtorrent|http) ;;
    *) echo "unknown client $c" >&2; exit 64 ;; esac
done
PIECE_B=$(parse_bytes "$PIECE") || exit 64
[[ $SEEDERS =~ ^[1-9][0-9]*$ ]] || { echo "--seeders: not a positive number: $SEEDERS" >&2; exit 64; }
for n in $NS_LIST; do
  [ "$SEEDERS" -le "$n" ] || { echo "--seeders $SEEDERS leaves no downloader at N=$n" >&2; exit 64; }
done
# p2p_host.sh reads it: hosts below it are listed with hasFile 1 and copy the payload.
export P2P_SEEDERS=$SEEDERS
SB_DIR="$REPO_DIR/../shared/swarm-bench"
[ -x "$SB_DIR/swarm-bench" ] || { echo "no swarm-bench at $SB_DIR" >&2; exit 1; }
SB_DIR=$(cd "$SB_DIR" && pwd)
SB="$SB_DIR/swarm-bench"
STATE=${SWARM_BENCH_DIR:-/dev/shm/swarm-bench}
STAMP=$(date +%Y%m%d-%H%M%S)
JSON=${JSON:-$STATE/p2pshare-$STAMP.jsonl}

if ip netns list 2>/dev/null | grep -Eq '^(sbbr|sb[0-9]+)( |$)'; then
  if [ -z "$FORCE" ]; then
    echo "a swarm-bench testbed exists already (someone else's run?); stop it or pass --force" >&2
    "$SB" status >&2
    exit 1
  fi
fi
if [ -z "$NO_INSTALL" ]; then
  install_pkgs ip:iproute2 ping:iputils-ping opentracker:opentracker mktorrent:mktorrent \
    aria2c:aria2 curl:curl
  $PY -c 'import libtorrent' 2>/dev/null || install_pkgs /nonexistent:python3-libtorrent
fi
BIN_DIR="$STATE/p2pshare-bin-$STAMP"
build_p2pshare "$BIN_DIR"

# torrent piece size = PieceSize when it is a power of two that mktorrent accepts
# (2^15 .. 2^28); else the nearest of those, or swarm-bench's default 2^18 when
# PieceSize is not a power of two. Said on stderr, so a ratio is not read as like
# for like when it is not.
PIECE_LOG2=18
for ((e = 0; e <= 40; e++)); do [ $((1 << e)) -eq "$PIECE_B" ] && PIECE_LOG2=$e; done
if [ $((1 << PIECE_LOG2)) -ne "$PIECE_B" ]; then
  echo "note: PieceSize $PIECE_B is not a power of two; torrents use 2^$PIECE_LOG2-byte pieces" >&2
elif [ "$PIECE_LOG2" -lt 15 ] || [ "$PIECE_LOG2" -gt 28 ]; then
  PIECE_LOG2=$((PIECE_LOG2 < 15 ? 15 : 28))
  echo "note: mktorrent takes pieces of 2^15 to 2^28 bytes; torrents use 2^$PIECE_LOG2 (PieceSize $PIECE_B)" >&2
fi

UP=""
cleanup() { [ -n "$UP" ] && "$SB" down >&2; UP=""; }
trap 'cleanup; rm -rf "$BIN_DIR"' EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

mkdir -p "$(dirname "$JSON")"
echo "== results (JSON lines): $JSON" >&2
common_run=(--size "$SIZE" --json "$JSON")
[ -n "$TIMEOUT" ] && common_run+=(--timeout "$TIMEOUT")
[ -n "$QUIET_WAIT" ] && common_run+=(--quiet-wait "$QUIET_WAIT")
[ -n "$KEEP" ] && common_run+=(--keep)
[ -n "$VERBOSE" ] && common_run+=(-v)

run_client() { # client N run
  local c=$1 n=$2 k=${K:-$2} args label tmpl
  case $c in
    p2pshare|p2pshare-strict)
      args=$P2P_ARGS
      if [ "$c" = p2pshare-strict ]; then args="--strict $args"
      elif [ -n "$PDEPTH" ]; then args="--pipeline-depth $PDEPTH $args"; fi
      label="$c$TAG"
      tmpl=$(p2p_template "$P2P_BIN" "$k" "$UNCHOKE" "$OPTIMISTIC" "$PIECE_B" $args)
      "$SB" run --clients custom --label "$label" --port "$PORT" --seed-ready 'port:{port}' \
        --seed-cmd "$tmpl" --peer-cmd "$tmpl" "${common_run[@]}"
      ;;
    *)
      local pre=()
      if [ "$SEEDERS" -gt 1 ]; then
        # The preset's own downloader command, after a copy of the payload on hosts
        # 1..K-1: aria2 and libtorrent check the copy and seed it.
        case $c in
          aria2|libtorrent) tmpl=$(sb_py 'print(sb.PRESETS[sys.argv[1]]["peer"])' "$c") || return 1 ;;
          *) echo "--seeders: not supported for $c" >&2; return 1 ;;
        esac
        pre=(--peer-cmd "if [ {i} -lt $SEEDERS ]; then cp {file} {out} || exit 70; fi; exec $tmpl")
      fi
      "$SB" run --clients "$c" --piece-log2 "$PIECE_LOG2" "${pre[@]}" "${common_run[@]}"
      ;;
  esac
}

FAILS=0
for n in $NS_LIST; do
  echo "== N=$n: swarm-bench up $n --rate $RATE ${SEED_RATE:+--seed-rate $SEED_RATE} ${DOWN_RATE:+--down-rate $DOWN_RATE}" >&2
  up_args=(--rate "$RATE")
  [ -n "$SEED_RATE" ] && up_args+=(--seed-rate "$SEED_RATE")
  [ -n "$DOWN_RATE" ] && up_args+=(--down-rate "$DOWN_RATE")
  "$SB" up "$n" "${up_args[@]}" || { echo "swarm-bench up failed" >&2; exit 1; }
  UP=1
  if [ -n "$HOST_RATES" ]; then
    set_host_rates "$STATE/state.json" "$HOST_RATES" || exit 1
  fi
  # N, the seeders' summed upload, everyone's summed upload (bit/s): the K-seeder bound
  $PY -c 'import json,sys; h=json.load(open(sys.argv[1]))["hosts"]; k=int(sys.argv[2]);
print(len(h) - 1, sum(x["up_bps"] for x in h[:k]), sum(x["up_bps"] for x in h))' \
    "$STATE/state.json" "$SEEDERS" >>"$JSON.caps" || exit 1
  for ((r = 1; r <= RUNS; r++)); do
    for c in $CLIENTS; do
      echo "-- N=$n run $r/$RUNS: $c (k=${K:-$n} unchoke=$UNCHOKE optimistic=$OPTIMISTIC piece=$PIECE_B)" >&2
      run_client "$c" "$n" || FAILS=$((FAILS + 1))
    done
  done
  cleanup
done

echo
echo "== swarm-bench report $JSON"
"$SB" report "$JSON"
echo
echo "== p2pshare $P2P_VERSION vs presets: median ratio = measured/T_min (seed_up = seeder bytes sent, in file copies)"
$PY - "$JSON" "$SEEDERS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
seeders = int(sys.argv[2])
if seeders > 1:
    # Kumar-Ross with K seeders and N-K+1 hosts that need the file: every bit leaves
    # some seeder at least once, and every needing host receives F through the sum of
    # all uploads.  The harness's own ratio assumes one seeder; it is kept as
    # ratio_one_seeder.  Caps per N were recorded by swarm.sh when the testbed was up.
    caps = {}
    for l in open(sys.argv[1] + ".caps"):
        n_, seeds_, all_ = l.split()
        caps[int(n_)] = (float(seeds_), float(all_))
    print(f"ratios are for {seeders} seeders: T_min = max(F / sum(u_seeders), (N-K+1) F / sum(u_all))")
    for r in rows:
        us, ua = caps[r["n"]]
        F = r["size"] * 8.0
        t_min = max(F / us, (r["n"] - seeders + 1) * F / ua)
        r["ratio_one_seeder"], r["t_min_s"] = r["ratio"], t_min
        r["ratio"] = r["measured_s"] / t_min
groups = {}
for r in rows:
    groups.setdefault((r["n"], r["clients"]), []).append(r)
clients = []
for r in rows:
    if r["clients"] not in clients:
        clients.append(r["clients"])
ns = sorted({r["n"] for r in rows})
def med(rs, key):
    v = [r[key] for r in rs if r["status"] == "ok"]
    return statistics.median(v) if v else None
# CPU both as swarm-bench gives it (cores: a rate, higher for a client that moves the
# same bytes in less time) and as work done (core-seconds over the run: cores x time).
for r in rows:
    r["cpu_s"] = (r.get("cpu_swarm_cores") or 0) * r["measured_s"]
print(f"{'clients':<22} {'N':>3} {'ok':>5} {'median_s':>9} {'ratio_med':>9} {'seed_up':>8} {'vs_aria2':>8} {'cpu_sw':>6} {'cpu_s':>6} {'vs_aria2':>8} {'noisy':>5}")
for n in ns:
    base = med(groups.get((n, "aria2"), []), "measured_s")
    base_cpu = med(groups.get((n, "aria2"), []), "cpu_s")
    for c in clients:
        rs = groups.get((n, c))
        if not rs:
            continue
        ok = [r for r in rs if r["status"] == "ok"]
        m = med(rs, "measured_s")
        if m is None:
            print(f"{c:<22} {n:>3} {len(ok):>2}/{len(rs):<2} failed: " + ",".join(sorted({r['status'] for r in rs})))
            continue
        vs = f"{m / base:.3f}" if base else "-"
        cpu = med(rs, "cpu_s")
        vs_cpu = f"{cpu / base_cpu:.3f}" if base_cpu else "-"
        noisy = sum(1 for r in ok if (r.get("cpu_other_cores") or 0) > 0.25)
        print(f"{c:<22} {n:>3} {len(ok):>2}/{len(rs):<2} {m:>9.2f} {med(rs, 'ratio'):>9.3f} "
              f"{med(rs, 'seed_tx_copies'):>7.2f}F {vs:>8} {med(rs, 'cpu_swarm_cores'):>6.2f} {cpu:>6.1f} {vs_cpu:>8} {noisy:>5}")
print()
w = max(16, *(len(c) + 2 for c in clients))
print(f"{'N':>3} " + " ".join(f"{c:>{w}}" for c in clients) + "   (median ratio, seed_up)")
for n in ns:
    cells = []
    for c in clients:
        rs = groups.get((n, c), [])
        r_, s_ = med(rs, "ratio"), med(rs, "seed_tx_copies")
        cells.append(f"{r_:.3f} ({s_:.2f}F)" if r_ is not None else ("failed" if rs else "-"))
    print(f"{n:>3} " + " ".join(f"{x:>{w}}" for x in cells))
# p2pshare runs: which downloaders ever told the seeder 'interested' (one that never did
# got no piece from it), and ERROR lines in the peers' stderr (logs/h<I>-*.log)
import glob, os, re
diag = []
for r in rows:
    if not r["clients"].startswith("p2pshare"):
        continue
    seedlog = os.path.join(r["rundir"], "h0", "log_peer_1000.log")
    try:
        txt = open(seedlog, errors="replace").read()
    except FileNotFoundError:
        continue
    asked = {int(x) for x in re.findall(r"received the 'interested' message from (\d+)", txt)}
    never = [1000 + i for i in range(seeders, r["n"] + 1) if 1000 + i not in asked]
    errs = sum(1 for fn in glob.glob(os.path.join(r["rundir"], "logs", "h*.log"))
               for l in open(fn, errors="replace") if " ERROR " in l)
    if never or errs:
        diag.append(f"  {r['clients']} N={r['n']} run {r['run']}: never interested in the seeder: "
                    f"{','.join(map(str, never)) or '-'}; ERROR lines: {errs}; {r['rundir']}")
if diag:
    print()
    print("p2pshare diagnostics (downloaders that never sent 'interested' to the seeder got no piece from it):")
    print("\n".join(diag))
bad = [r for r in rows if r["status"] != "ok"]
if bad:
    print()
    print("runs not ok (logs: <rundir>/logs/h<I>-peer.log = stderr, <rundir>/h<I>/log_peer_<ID>.log = event log):")
    for r in bad:
        print(f"  {r['clients']} N={r['n']} run {r['run']}: {r['status']} done={r['completed']}/{r['n']} "
              f"failed={r['failed']} {r['rundir']}")
EOF
[ "$FAILS" -gt 0 ] && { echo "$FAILS swarm-bench run command(s) reported a run that was not ok" >&2; exit 2; }
exit 0
