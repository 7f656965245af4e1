#!/usr/bin/env bash
# bench/faults.sh: the fault-injection scenarios of tests/faults.rs at a larger size.
#
#   bench/faults.sh                                  # 256 MiB, 8 downloaders, 6 kills, netns too if root
#   bench/faults.sh --size 64MiB --peers 4 --kills 3 --no-netns      # quicker
#   bench/faults.sh --seed 1234 --only kill          # replay one scenario
#
# It runs the test binary in release mode (`cargo test --release --test faults`),
# one scenario at a time, with FAULT_* variables (see the top of tests/faults.rs),
# and sums the `FAULTS scenario=...` line each scenario prints:
#   injected                 faults injected (kills, corrupt uploads, stalls, partitions)
#   survived                 ... after which the victims still ended with the right file
#   corrupt_bytes_accepted   bytes of any final copy that differ from the original (must be 0)
#   verified_pieces_lost     pieces logged as downloaded before a kill that the restart
#                            did not find verified on disk (must be 0)
# Exit status: 0 all scenarios passed and both must-be-zero counts are 0; 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

size=256MiB piece=256KiB peers=8 kills=6 secs=20 seed="" runs=1
only="" skip="" netns=auto keep="" data_dir=/dev/shm deadline=900 build=1
usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; cat <<'EOF'
Options:
  --size 256MiB    FileSize                      --piece 256KiB  PieceSize
  --peers 8        downloaders                   --kills 6       SIGKILL+restart in the kill scenarios
  --secs 20        seconds the paced seeder takes for one copy (sets the upload caps)
  --seed N         FAULT_SEED (replay)           --runs 1        repeat everything (new seed each time)
  --only PATTERN   run only tests whose name contains PATTERN (cargo test filter)
  --skip PATTERN   skip tests whose name contains PATTERN (repeatable)
  --netns / --no-netns   also run the ignored network-namespace tests [auto: if root and `ip netns` works]
  --data-dir DIR   where the swarm directories go [/dev/shm]
  --deadline S     FAULT_DEADLINE per swarm [900]   --keep  keep every swarm directory
  --no-build       do not rebuild (use the last release test binary)
EOF
}
skips=()
while [ $# -gt 0 ]; do
  case $1 in
    --size) size=$2; shift ;;
    --piece) piece=$2; shift ;;
    --peers) peers=$2; shift ;;
    --kills) kills=$2; shift ;;
    --secs) secs=$2; shift ;;
    --seed) seed=$2; shift ;;
    --runs) runs=$2; shift ;;
    --only) only=$2; shift ;;
    --skip) skips+=("--skip" "$2"); shift ;;
    --netns) netns=1 ;;
    --no-netns) netns=0 ;;
    --data-dir) data_dir=$2; shift ;;
    --deadline) deadline=$2; shift ;;
    --keep) keep=1 ;;
    --no-build) build=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$netns" = auto ]; then
  netns=0
  if [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null && ip netns list >/dev/null 2>&1; then netns=1; fi
fi
command -v python3 >/dev/null || echo "note: no python3: the pypeer scenarios will be skipped" >&2
mkdir -p "$data_dir"
stamp=$(date +%Y%m%d-%H%M%S)
out_dir=/tmp/p2pshare-faults-bench-$stamp
mkdir -p "$out_dir"

if [ "$build" = 1 ]; then
  echo "== cargo test --release --test faults --no-run" >&2
  cargo test --release --test faults --no-run --quiet >&2 || { echo "build failed" >&2; exit 1; }
fi

list_args=()
[ "$netns" = 1 ] && list_args=(--include-ignored)
mapfile -t tests < <(cargo test --release --quiet --test faults -- --list "${list_args[@]}" 2>/dev/null \
  | sed -n 's/: test$//p')
selected=()
for t in "${tests[@]}"; do
  [ -n "$only" ] && [[ $t != *"$only"* ]] && continue
  s_skip=0
  for pat in "${skips[@]}"; do [[ $t == *"$pat"* ]] && s_skip=1; done
  [ $s_skip = 1 ] || selected+=("$t")
done
[ ${#selected[@]} -gt 0 ] || { echo "no scenario selected" >&2; exit 2; }

failed=()
for run in $(seq 1 "$runs"); do
  run_seed=${seed:-$((RANDOM * 32768 + RANDOM))}
  [ -n "$seed" ] && [ "$run" -gt 1 ] && run_seed=$((seed + run - 1))
  echo "== run $run/$runs: FAULT_SEED=$run_seed size=$size piece=$piece peers=$peers kills=$kills secs=$secs netns=$netns" >&2
  # One scenario at a time: each is timed by its own upload caps, and several swarms
  # of 256 MiB at once would measure the machine, not the peers.
  for t in "${selected[@]}"; do
    log=$out_dir/run$run-$t.txt
    start_s=$SECONDS
    FAULT_SEED=$run_seed FAULT_SIZE=$size FAULT_PIECE=$piece FAULT_PEERS=$peers FAULT_KILLS=$kills \
    FAULT_SECS=$secs FAULT_DEADLINE=$deadline FAULT_TMPDIR=$data_dir ${keep:+FAULT_KEEP=1} \
      cargo test --release --quiet --test faults -- --exact "$t" --include-ignored --nocapture >"$log" 2>&1
    status=$?
    line=$(grep '^FAULTS ' "$log" | tail -1)
    if [ $status -eq 0 ]; then
      printf '   ok     %-52s %4ss  %s\n' "$t" $((SECONDS - start_s)) "${line#FAULTS }" >&2
    else
      failed+=("run $run: $t ($log)")
      printf '   FAILED %-52s %4ss  %s\n' "$t" $((SECONDS - start_s)) "${line#FAULTS }" >&2
      grep -m1 -A3 -E "^[a-z_]+: " "$log" | cut -c1-300 | sed "s/^/          /" >&2
    fi
  done
done

# Totals over every FAULTS line of every run.
cat "$out_dir"/run*.txt | grep -h '^FAULTS ' | awk '
  function val(k,   i, kv) { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) return kv[2] } return "" }
  {
    sc = val("scenario"); inj = val("injected") + 0
    sur = val("survived") + 0
    cor = val("corrupt_bytes_accepted") + 0; lost = val("verified_pieces_lost") + 0
    printf "%-32s injected %5d  survived %5d  corrupt_bytes_accepted %d  verified_pieces_lost %d  %ss\n", sc, inj, sur, cor, lost, val("secs")
    I += inj; S += sur; C += cor; L += lost
  }
  END {
    printf "\nTOTAL faults injected %d, survived %d, corrupt bytes accepted %d (must be 0), verified pieces lost on restart %d (must be 0)\n", I, S, C, L
    exit (C != 0 || L != 0) ? 1 : 0
  }'
totals=$?
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED scenarios (${#failed[@]}); their swarm directories are kept and named in the output:" >&2
  printf '  %s\n' "${failed[@]}" >&2
fi
[ ${#failed[@]} -eq 0 ] && [ $totals -eq 0 ]
