# Sourced by swarm.sh and loopback.sh: package install, build, frozen binaries.
# shellcheck shell=bash

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
PY=/usr/bin/python3   # Debian's python (python3-libtorrent is built for it)

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "$(basename "$0"): needs root (network namespaces, tc, opentracker's chroot)" >&2
    exit 1
  fi
}

# install_pkgs CMD:PKG ...  -- apt-get installs the packages whose command is missing.
install_pkgs() {
  local missing=() spec cmd pkg
  for spec in "$@"; do
    cmd=${spec%%:*} pkg=${spec#*:}
    case $cmd in
      /*) [ -e "$cmd" ] || missing+=("$pkg") ;;
      *) command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg") ;;
    esac
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "== installing: ${missing[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# build_p2pshare DEST_DIR -- cargo build --release, then copy peerProcess to DEST_DIR
# so that a rebuild of the tree during a long benchmark does not change what runs.
# Sets P2P_BIN (peerProcess) and P2P_VERSION (git commit, +dirty).
build_p2pshare() {
  local dest=$1
  if [ -z "${NO_BUILD:-}" ]; then
    echo "== cargo build --release ($REPO_DIR)" >&2
    (cd "$REPO_DIR" && cargo build --release --quiet) || { echo "build failed" >&2; exit 1; }
  fi
  local src="$REPO_DIR/target/release"
  [ -x "$src/peerProcess" ] || { echo "no $src/peerProcess (build first)" >&2; exit 1; }
  mkdir -p "$dest"
  cp -f "$src/peerProcess" "$dest/peerProcess"
  cp -f "$src/p2pshare" "$dest/p2pshare"
  P2P_BIN="$dest/peerProcess"
  P2P_VERSION=$(cd "$REPO_DIR" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(cd "$REPO_DIR" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    P2P_VERSION+="+dirty"
  fi
  echo "== p2pshare $P2P_VERSION, binary frozen at $P2P_BIN (built $(date -r "$src/peerProcess" '+%F %T'))" >&2
}

# parse_bytes 256KiB -> 262144 (k/m/g with or without "iB"/"B" = binary units; plain number = bytes)
parse_bytes() {
  local s=${1,,} num unit
  if [[ $s =~ ^([0-9]+)(k|m|g)?(ib|b)?$ ]]; then
    num=${BASH_REMATCH[1]} unit=${BASH_REMATCH[2]}
    case $unit in
      k) echo $((num << 10)) ;;
      m) echo $((num << 20)) ;;
      g) echo $((num << 30)) ;;
      *) echo "$num" ;;
    esac
  else
    echo "bad size: $1 (use e.g. 262144, 256KiB, 1GiB)" >&2
    return 1
  fi
}

# p2p_template BIN K UNCHOKE OPTIMISTIC PIECE_BYTES [ARGS] -- the swarm-bench command
# template (seeder and downloaders alike) that runs BIN through p2p_host.sh, whose
# argument order this is. Only harness placeholders may be in braces (the template goes
# through str.format).
p2p_template() {
  local bin=$1 k=$2 unchoke=$3 optimistic=$4 piece=$5
  shift 5
  echo "exec $BENCH_DIR/p2p_host.sh $bin {i} {n} {ip} {peers} {port} {name} {size} {dir} {file} $k $unchoke $optimistic $piece $*"
}

# The two below need SB (the swarm-bench script) and PY.

# sb_py "CODE" ARGS... -- runs CODE with swarm-bench loaded as module `sb`, so its own
# rate parser, tbf settings and preset commands are used rather than copies of them.
sb_py() {
  local code=$1
  shift
  $PY - "$SB" "$@" <<PYEOF
import importlib.machinery, importlib.util, sys
_l = importlib.machinery.SourceFileLoader("sb", sys.argv[1])
_s = importlib.util.spec_from_loader("sb", _l)
sb = importlib.util.module_from_spec(_s)
_l.exec_module(sb)
sys.argv = sys.argv[1:]
$code
PYEOF
}

# set_host_rates STATE_JSON "R1 R2 ..." -- replace the downloaders' upload tbf with the
# given caps (cycled over hosts 1..N; swarm-bench's burst and latency) and record them
# in the harness's state, which its T_min (Kumar-Ross) reads; the "rate" label becomes
# e.g. "20mbit[10mbit,40mbit]" so the report keeps such runs apart.
set_host_rates() {
  sb_py '
import json, re
path, rates = sys.argv[1], re.split(r"[ ,]+", sys.argv[2].strip())
st = json.load(open(path))
for h in st["hosts"][1:]:
    r = rates[(h["i"] - 1) % len(rates)]
    up = sb.parse_rate(r)
    burst = sb.default_burst(up)
    sb.sh(["tc", "-n", h["ns"], "qdisc", "replace", "dev", "eth0", "root"]
          + sb.tbf_args(up, burst, st["latency_s"]))
    h["up_bps"], h["burst"] = up, burst
    print("   host %d: upload %s" % (h["i"], r), file=sys.stderr)
st["rate"] = "%s[%s]" % (st["rate"], ",".join(rates))
json.dump(st, open(path, "w"), indent=1)
' "$@"
}
