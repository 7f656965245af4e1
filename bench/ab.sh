#!/bin/bash
# A/B of p2pshare builds or options in ../shared/swarm-bench: one testbed, the variants
# run one after the other in every round (so drifting load hits them alike), each as a
# frozen binary.  See bench/README.md.
set -u
source "$(dirname "$0")/common.sh"

usage() {
  cat <<'EOF'
usage: bench/ab.sh [options] LABEL=REV[:PEER ARGS] LABEL=REV[:PEER ARGS] ...
  REV                   a git revision (built in a worktree under the state dir), or "."
                        for the working tree as it is (cargo build --release)
  PEER ARGS             peerProcess arguments of that variant, e.g. "--block-size=32768"
  --n N                 downloaders (default 16)
  --runs K              rounds (default 3)
  --size 64MiB          payload (default 64MiB)
  --rate 20mbit         upload cap of every host (default 20mbit)
  --host-rates "R ..."  downloaders' upload caps, cycled over hosts 1..N (as in swarm.sh)
  --k K --unchoke S --optimistic S --piece SIZE   as in swarm.sh (defaults N, 1, 2, 256KiB)
  --seeders K           hosts 0..K-1 start with the file (default 1; the ratio printed
                        is swarm-bench's one-seeder ratio, compare measured times)
  --quiet-wait S        swarm-bench --quiet-wait (default 20)
  --json FILE           JSON lines (default /dev/shm/swarm-bench/ab-<stamp>.jsonl)
example:
  sudo bench/ab.sh --n 8 --host-rates "5mbit 20mbit" old=674ca09 new=.
EOF
}

N=16 RUNS=3 SIZE=64MiB RATE=20mbit HOST_RATES="" K="" UNCHOKE=1 OPTIMISTIC=2 PIECE=256KiB
QUIET_WAIT=20 JSON="" VARIANTS=() SEEDERS=1
while [ $# -gt 0 ]; do
  case $1 in
    --n) N=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --host-rates) HOST_RATES=$2; shift ;;
    --k) K=$2; shift ;;
    --unchoke) UNCHOKE=$2; shift ;;
    --optimistic) OPTIMISTIC=$2; shift ;;
    --piece) PIECE=$2; shift ;;
    --seeders) SEEDERS=$2; shift ;;
    --quiet-wait) QUIET_WAIT=$2; shift ;;
    --json) JSON=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "unknown option $1" >&2; usage >&2; exit 64 ;;
    *=*) VARIANTS+=("$1") ;;
    *) echo "not LABEL=REV: $1" >&2; usage >&2; exit 64 ;;
  esac
  shift
done
[ ${#VARIANTS[@]} -ge 1 ] || { usage >&2; exit 64; }
need_root
PIECE_B=$(parse_bytes "$PIECE") || exit 64
SB_DIR=$(cd "$REPO_DIR/../shared/swarm-bench" && pwd) || exit 1
SB="$SB_DIR/swarm-bench"
STATE=${SWARM_BENCH_DIR:-/dev/shm/swarm-bench}
STAMP=$(date +%Y%m%d-%H%M%S)
JSON=${JSON:-$STATE/ab-$STAMP.jsonl}
[[ $SEEDERS =~ ^[1-9][0-9]*$ ]] && [ "$SEEDERS" -le "$N" ] || { echo "--seeders: 1 to N, not $SEEDERS" >&2; exit 64; }
# Hosts 0 .. SEEDERS-1 start with the file (see p2p_host.sh). swarm-bench's ratio
# assumes one seeder: with more, compare the measured times.
export P2P_SEEDERS=$SEEDERS

if ip netns list 2>/dev/null | grep -Eq '^(sbbr|sb[0-9]+)( |$)'; then
  echo "a swarm-bench testbed exists already (someone else's run?); stop it first" >&2
  exit 1
fi

# Freeze one binary per variant: label -> dir with peerProcess and p2pshare.
declare -A BIN ARGS
for v in "${VARIANTS[@]}"; do
  label=${v%%=*} rest=${v#*=}
  rev=${rest%%:*} args=""
  [ "$rest" != "$rev" ] && args=${rest#*:}
  dest="$STATE/ab-bin-$STAMP/$label"
  if [ "$rev" = "." ]; then
    build_p2pshare "$dest"
  else
    commit=$(git -C "$REPO_DIR" rev-parse --verify "$rev^{commit}") || exit 64
    wt="$STATE/ab-src-${commit:0:12}"
    [ -d "$wt" ] || git -C "$REPO_DIR" worktree add -f --detach "$wt" "$commit" >/dev/null || exit 1
    echo "== building $label = ${commit:0:12}" >&2
    (cd "$wt" && cargo build --release --quiet) || { echo "build of $rev failed" >&2; exit 1; }
    mkdir -p "$dest"
    cp -f "$wt/target/release/peerProcess" "$wt/target/release/p2pshare" "$dest/"
  fi
  BIN[$label]="$dest/peerProcess"
  ARGS[$label]=$args
done

cleanup() { "$SB" down >/dev/null 2>&1; }
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM
"$SB" up "$N" --rate "$RATE" >&2 || { echo "swarm-bench up failed" >&2; exit 1; }
[ -n "$HOST_RATES" ] && { set_host_rates "$STATE/state.json" "$HOST_RATES" || exit 1; }
echo "== results (JSON lines): $JSON" >&2
for ((r = 1; r <= RUNS; r++)); do
  for v in "${VARIANTS[@]}"; do
    label=${v%%=*}
    tmpl=$(p2p_template "${BIN[$label]}" "${K:-$N}" "$UNCHOKE" "$OPTIMISTIC" "$PIECE_B" ${ARGS[$label]})
    "$SB" run --clients custom --label "$label" --port 7000 --seed-ready 'port:{port}' \
      --seed-cmd "$tmpl" --peer-cmd "$tmpl" --size "$SIZE" --json "$JSON" \
      --quiet-wait "$QUIET_WAIT" 2>&1 | grep 'clients='
  done
done
echo "== swarm-bench report $JSON"
"$SB" report "$JSON"
