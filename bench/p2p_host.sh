#!/bin/bash
# Runs one p2pshare peer as a swarm-bench host (called by swarm.sh's --seed-cmd /
# --peer-cmd templates, inside the host's network namespace, cwd = the host's dir).
#
#   p2p_host.sh BIN I N IP PEERS PORT NAME SIZE DIR FILE K UNCHOKE OPTIMISTIC PIECE [peerProcess args...]
#
# Layout it makes in DIR (the harness's empty per-host dir, {dir}):
#   DIR/Common.cfg, DIR/PeerInfo.cfg   identical on every host
#   DIR/peer_<ID> -> .                 so peer_<ID>/<FileName> IS {out} = {dir}/{name}
#   DIR/log_peer_<ID>.log              the SPEC A6 event log (kept in the run dir)
# Peer IDs are 1000+I; PeerInfo.cfg lists hosts 0..N in index order (host 0 = the
# seeder, hasFile 1), addresses derived from this host's IP and index (swarm-bench
# numbers hosts consecutively: 10.77.0.(10+I)) and cross-checked against {peers}.
# P2P_SEEDERS=K (swarm.sh --seeders): hosts 0..K-1 are listed with hasFile 1, and hosts
# 1..K-1 copy the payload to {out} before they start (they are seeders too).
# The downloaders exec peerProcess.  The seeder runs it as a child and, when it exits 0
# (every peer has the file), sleeps instead of exiting, so the harness never sees a
# "seed-exited" race with its own completion poll; a non-zero exit is passed on.
set -u
export NO_COLOR=1   # plain tracing output in the harness logs
if [ $# -lt 14 ]; then
  echo "usage: $0 BIN I N IP PEERS PORT NAME SIZE DIR FILE K UNCHOKE OPTIMISTIC PIECE [peer args...]" >&2
  exit 64
fi
bin=$1 i=$2 n=$3 ip=$4 peers=$5 port=$6 name=$7 size=$8 dir=$9 file=${10}
k=${11} unchoke=${12} optimistic=${13} piece=${14}
shift 14

die() { echo "p2p_host[$i]: $*" >&2; exit 70; }

cd "$dir" || die "cannot cd to $dir"
seeders=${P2P_SEEDERS:-1}
id=$((1000 + i))
prefix=${ip%.*}
last=${ip##*.}
base=$((last - i))

# Every host of the swarm, in index order; check it against the harness's {peers}.
# Builtins only, no subshells or pipes: the harness starts every downloader at once
# on the same 2 cores, and its clock runs from the first one's start. With a subshell
# per host line and sort/tr/sed here, the first peerProcess started 0.12-0.15 s after
# the harness's clock at 16 downloaders; this way about 0.01 s (bench/RESULTS.md).
declare -A listed=()
IFS=, read -r -a got <<<"$peers"
for h in "${got[@]}"; do
  [ -n "$h" ] && listed[$h]=1
done
info=""
for ((j = 0; j <= n; j++)); do
  h="$prefix.$((base + j))"
  if [ "$j" -ne "$i" ]; then
    [ -n "${listed[$h]:-}" ] || die "derived host $h is not in {peers} ($peers)"
    unset "listed[$h]"
  fi
  info+="$((1000 + j)) $h $port $((j < seeders ? 1 : 0))"$'\n'
done
[ ${#listed[@]} -eq 0 ] || die "{peers} has hosts not derived from index and IP: ${!listed[*]}"

printf 'NumberOfPreferredNeighbors %s\nUnchokingInterval %s\nOptimisticUnchokingInterval %s\nFileName %s\nFileSize %s\nPieceSize %s\n' \
  "$k" "$unchoke" "$optimistic" "$name" "$size" "$piece" >Common.cfg
printf '%s' "$info" >PeerInfo.cfg
ln -sfn . "peer_$id"
# Every host hashes the seeder's payload into the same manifest, so pieces are
# verified (BLAKE3) as they arrive -- the fair comparison with BitTorrent's SHA-1.
# P2P_NO_MANIFEST=1 skips it.
# The seeder's host makes it before it starts listening; downloaders (started once the
# seeder listens) copy it, as an operator ships it with the configs -- hashing 64 MiB
# on every host at once would put N hashes of the file inside the measured time
# (BitTorrent clients get a .torrent made beforehand too).
if [ -z "${P2P_NO_MANIFEST:-}" ]; then
  shipped="${file%/*}/$name.p2pmanifest"
  if [ "$i" -ne 0 ] && [ -s "$shipped" ]; then
    # Read where the seeder's host wrote it (a copy per host was one more process
    # to start at the harness's time zero).
    set -- --manifest "$shipped" "$@"
  else
    "${bin%/*}/p2pshare" manifest --dir "$dir" "$file" >/dev/null || die "manifest failed"
  fi
fi

if [ "$i" -eq 0 ]; then
  # The harness copied the payload to {file} = {dir}/{name} already; be safe anyway.
  if [ ! -e "$dir/$name" ]; then
    ln -s "$file" "$dir/$name" || die "cannot link $file"
  fi
  echo "p2p_host[0]: seeder $id $ip:$port k=$k unchoke=$unchoke optimistic=$optimistic piece=$piece args: $*" >&2
  # P2P_SEED_ARGS: extra arguments for the seeder only (experiments).
  # shellcheck disable=SC2086
  "$bin" "$id" --dir "$dir" "$@" ${P2P_SEED_ARGS:-}
  rc=$?
  echo "p2p_host[0]: peerProcess $id exited rc=$rc at $(date +%T.%N)" >&2
  [ "$rc" -eq 0 ] && exec sleep infinity
  exit "$rc"
fi
if [ "$i" -lt "$seeders" ]; then
  cp "$file" "$dir/$name" || die "cannot copy $file (seeder $i of $seeders)"
fi
# P2P_PEER_ARGS: extra arguments for the downloaders only (experiments).
# shellcheck disable=SC2086
exec "$bin" "$id" --dir "$dir" "$@" ${P2P_PEER_ARGS:-}
