#!/bin/bash
# Loopback benchmark, no caps: 1 seeder + 7 downloaders on 127.0.0.1 with p2pshare
# (default and --strict), aria2 and libtorrent (BitTorrent + opentracker), one after the other in
# the same invocation; wall time, CPU seconds, peak RSS.  See bench/README.md.
set -u
source "$(dirname "$0")/common.sh"

usage() {
  cat <<'EOF'
usage: bench/loopback.sh [options]
  --size 1GiB          payload size (random bytes); default 1GiB
  --peers P            downloaders; default 7
  --data-dir DIR       where payload and copies live; default /dev/shm (needs (P+2) x size)
  --clients "..."      any of: p2pshare p2pshare-strict aria2 libtorrent; default all four
  --runs K             rounds, clients interleaved; default 1
  --k K                NumberOfPreferredNeighbors; default P (every neighbour unchoked)
  --unchoke S          UnchokingInterval; default 1
  --optimistic S       OptimisticUnchokingInterval; default 2
  --piece SIZE         PieceSize = torrent piece size (power of 2 for aria2, libtorrent); default 256KiB
  --pipeline-depth N   for the p2pshare (non-strict) variant; default: p2pshare's own
  --p2p-args "..."     more peerProcess arguments (both p2pshare variants)
  --aria2-args "..."   more aria2c arguments (all aria2 processes)
  --port-base P        p2pshare P..P+peers, aria2/libtorrent P+100.., tracker P+200; default random from 10000, below the
                       kernel's ephemeral ports (ip_local_port_range)
  --timeout S          per client run; default 600
  --exit-grace S       p2pshare: after the last copy completed, wait this long for every peer to exit
                       (else status "no-exit"); default 30
  --json FILE          append one JSON line per client run
  --keep               keep the data directory
  --no-install         do not apt-get anything
  --no-build           use target/release as it is (no cargo build)
EOF
}

args=() SIZE=1GiB DATA=/dev/shm NO_INSTALL="" PEERS=7
while [ $# -gt 0 ]; do
  case $1 in
    --size) SIZE=$2; shift ;;
    --peers) PEERS=$2; shift ;;
    --data-dir) DATA=$2; shift ;;
    --clients|--runs|--k|--unchoke|--optimistic|--piece|--pipeline-depth|--p2p-args|--aria2-args|--port-base|--timeout|--exit-grace|--json)
      args+=("$1" "$2"); shift ;;
    --keep) args+=(--keep) ;;
    --no-install) NO_INSTALL=1 ;;
    --no-build) NO_BUILD=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option $1" >&2; usage >&2; exit 64 ;;
  esac
  shift
done

need_root   # opentracker chroots and drops to nobody
if [ -z "$NO_INSTALL" ]; then
  install_pkgs opentracker:opentracker mktorrent:mktorrent aria2c:aria2 ss:iproute2 /usr/bin/time:time
  $PY -c 'import libtorrent' 2>/dev/null || install_pkgs /nonexistent:python3-libtorrent
fi
STAMP=$(date +%Y%m%d-%H%M%S)
LOGS=/tmp/p2pshare-loopback-$STAMP
mkdir -p "$LOGS" "$DATA"
build_p2pshare "$LOGS/bin"

# room for the payload, the seeder's copy and P downloads
bytes=$(parse_bytes "$SIZE") || exit 64
avail=$(($(df -Pk "$DATA" | awk 'NR==2 {print $4}') * 1024))
if [ "$avail" -lt $(((PEERS + 2) * bytes)) ]; then
  echo "not enough room in $DATA: need $(((PEERS + 2) * bytes >> 20)) MiB, have $((avail >> 20)) MiB" >&2
  exit 1
fi

echo "== logs: $LOGS" >&2
$PY "$BENCH_DIR/loopback.py" --bin "$P2P_BIN" --version "$P2P_VERSION" --size "$SIZE" --peers "$PEERS" \
  --data-dir "$DATA" --logs "$LOGS" "${args[@]}"
rc=$?
rm -rf "$LOGS/bin"
echo "== logs kept in $LOGS (event logs, peer stderr, configs)" >&2
exit $rc
