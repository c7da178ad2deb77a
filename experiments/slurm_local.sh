#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine runs, preempts and requeues a jaxattr job.
#
#   sudo bash experiments/slurm_local.sh        # from any directory; takes a few minutes
#
# As root (the daemons run as root). Installs Debian's slurm-wlm and munge with apt-get when
# they are missing, writes a minimal slurm.conf into a temporary folder (this node, its CPUs as
# 2 task slots, no cgroups), starts munged, slurmctld and slurmd with it, and then:
#   1. submits experiments/slurm/train.sbatch (the script of docs/multihost.md) for
#      configs/test.py with 2 tasks of one CPU device each;
#   2. preempts it mid-training the way a cluster does: a job in a higher-priority partition
#      needs the node, Slurm sends the tasks SIGTERM (they checkpoint and exit 143) and
#      requeues the job, which resumes from the checkpoint once the node is free again;
#   3. trains the same config uninterrupted in one process with 2 devices, and prints the
#      two runs' test metrics side by side (equal to 1e-5 or the script fails);
#   4. stops every daemon it started (by pid) and removes the folder, also on failure.
# The job's log (both of its runs, each line labelled with its task) and its Slurm record
# (Restarts=1) are printed. Exit code 0 = the comparison holds.
#
# Environment: PYTHON (default: `python` on PATH) is the interpreter with jaxattr installed;
# JAXATTR_SLURM_KEEP=1 keeps the temporary folder; JAXATTR_SLURM_TIMEOUT_S (default 900) bounds
# each wait.
set -euo pipefail
# All of it in one block: bash parses a block whole before running it, so editing this file
# while it runs cannot change what runs.
{

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
TIMEOUT_S=${JAXATTR_SLURM_TIMEOUT_S:-900}
KILL_WAIT_S=120 # Slurm's KillWait, below.
# Keeps the two runs' float summation close (see tests/test_multihost.py): the 2 tasks hold
# every other example of a batch, the 1-process run's devices hold halves, so gradients are
# summed in another order; a small learning rate and a frozen backbone keep that from
# growing over the steps.
OVERRIDES=(
  --config=configs/test.py
  --config.optimizer.learning_rate=1e-3
  --config.history.start_epoch=0
  --config.train.freeze_backbone_epochs=3
  --config.train.num_epochs=3
)

say() { echo "[slurm_local $(date -u +%T)] $*"; }
die() {
  say "FAILED: $*" >&2
  exit 1
}

[[ $(id -u) == 0 ]] || die 'run as root: the Slurm and MUNGE daemons run as root here.'
[[ -x $PYTHON ]] || die "no Python interpreter (set PYTHON): '$PYTHON'"
"$PYTHON" -c 'import jaxattr' 2>/dev/null || die "$PYTHON cannot import jaxattr (pip install -e .)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
  ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  say 'installing slurm-wlm and munge with apt-get'
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
say "$(slurmctld -V), $(munged -V 2>&1 | awk '{print $1}')"

TMP=$(mktemp -d /tmp/jaxattr_slurm.XXXXXX)
chmod 755 "$TMP" # munged requires its socket's folder to be searchable by everyone.
MARK="JAXATTR_SLURM_LOCAL=$TMP" # In the environment of every process the cluster starts.
PIDS=()                          # Daemons started here, in start order.
JOBS=()
REFERENCE= # The 1-process run, while it runs.
say "temporary folder $TMP"

# Processes whose environment holds MARK (the daemons, their job steps, the job's tasks).
marked() {
  local f pid
  for f in $(grep -lzx -- "$MARK" /proc/[0-9]*/environ 2>/dev/null); do
    pid=${f#/proc/}
    pid=${pid%/environ}
    [[ $pid != "$$" ]] && alive "$pid" && echo "$pid"
  done
  return 0
}

alive() { # A zombie (ended, not yet reaped by init) does not count.
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}

stop_pids() { # TERM, then KILL whatever is left after 10 s.
  local pid left i
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    left=()
    for pid in "$@"; do alive "$pid" && left+=("$pid"); done
    ((${#left[@]})) || return 0
    sleep 0.1
  done
  say "killing ${left[*]} (still running 10 s after SIGTERM)"
  kill -KILL "${left[@]}" 2>/dev/null || true
}

cleanup() {
  local code=$? i pid
  trap - EXIT INT TERM
  set +e
  [[ -n $REFERENCE ]] && stop_pids "$REFERENCE"
  if ((${#JOBS[@]})); then
    # Let the jobs end (SIGTERM: they checkpoint; SIGKILL after KillWait) before the daemons
    # go; squeue lists nothing once they have (or when slurmctld is gone).
    scancel "${JOBS[@]}" 2>/dev/null
    local deadline=$((SECONDS + KILL_WAIT_S + 10))
    while ((SECONDS < deadline)) && [[ -n $(squeue -h -o %i 2>/dev/null) ]]; do sleep 0.5; done
  fi
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pids "${PIDS[i]}"; done
  mapfile -t left < <(marked)
  if ((${#left[@]})); then
    say "stopping leftover cluster processes: ${left[*]}"
    stop_pids "${left[@]}"
  fi
  for pid in "${PIDS[@]}"; do
    alive "$pid" && say "daemon $pid is still running" && code=1
  done
  if [[ ${JAXATTR_SLURM_KEEP:-0} == 1 ]]; then
    say "kept $TMP"
  else
    rm -rf "$TMP"
  fi
  say "stopped the daemons (pids ${PIDS[*]:-none}); exit code $code"
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }

wait_for() { # wait_for <what> <bash condition>: polls every second, up to TIMEOUT_S.
  local what=$1 t
  shift
  for ((t = 0; t < TIMEOUT_S; t++)); do
    eval "$*" && return 0
    sleep 1
  done
  die "timed out after $TIMEOUT_S s waiting for $what"
}

start_daemon() { # start_daemon <name> <pid file> <command...>: forks, then records the pid.
  local name=$1 pidfile=$2
  shift 2
  env "$MARK" "$@" || die "$name did not start; its log: $(ls "$TMP"/log/"$name"* 2>/dev/null)"
  wait_for "$name's pid file" "[[ -s $pidfile ]]"
  PIDS+=("$(cat "$pidfile")")
  say "started $name (pid ${PIDS[-1]})"
}

# MUNGE, with its own key and socket.
mkdir -m 700 "$TMP/munge" "$TMP/log"
head -c 1024 /dev/urandom >"$TMP/munge/munge.key"
chmod 400 "$TMP/munge/munge.key"
start_daemon munged "$TMP/munge/munged.pid" munged --socket="$TMP/munge.socket" \
  --key-file="$TMP/munge/munge.key" --pid-file="$TMP/munge/munged.pid" \
  --log-file="$TMP/log/munged.log" --seed-file="$TMP/munge/munged.seed"

# Slurm: this node ("localhost", which every machine resolves: JAX takes the coordinator's
# host from the job's node list), 2 CPUs, two partitions so that a job can preempt another.
export SLURM_CONF=$TMP/slurm.conf
mkdir -p "$TMP/state" "$TMP/spool"
cat >"$SLURM_CONF" <<EOF
ClusterName=jaxattr-local
SlurmctldHost=localhost
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also delays a requeued job's restart (120 s by default).
AuthInfo=socket=$TMP/munge.socket,cred_expire=10
StateSaveLocation=$TMP/state
SlurmdSpoolDir=$TMP/spool
SlurmctldPidFile=$TMP/slurmctld.pid
SlurmdPidFile=$TMP/slurmd.pid
SlurmctldLogFile=$TMP/log/slurmctld.log
SlurmdLogFile=$TMP/log/slurmd.log
# No cgroups (containers rarely allow them): processes tracked by parent pid, no binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Scheduling passes every 2 s (60 s / 30 s by default): a requeued job becomes eligible
# ~10 s after its preemption, with no event to wake the scheduler then.
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# The node as declared below, whatever the machine has (2 task slots on any machine).
SlurmdParameters=config_overrides
ReturnToService=2
# Seconds between SIGTERM and SIGKILL: longer than a train step plus a checkpoint write.
KillWait=$KILL_WAIT_S
MinJobAge=3600
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE
PartitionName=urgent Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF
start_daemon slurmctld "$TMP/slurmctld.pid" slurmctld -f "$SLURM_CONF"
start_daemon slurmd "$TMP/slurmd.pid" slurmd -f "$SLURM_CONF" -N localhost
wait_for 'the node to be idle' '[[ $(sinfo -h -n localhost -o %T 2>/dev/null) == idle* ]]'
say "cluster up: $(sinfo -h -o '%P %D nodes %c CPUs %T' | paste -sd ';')"

# 1. The job: two tasks, one CPU device each, the workdir and data on this disk.
export PATH="$(dirname "$PYTHON"):$PATH" # The job runs `python -m jaxattr.main`.
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2
# The requeued job and the reference reuse the first run's compilations.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$TMP/jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0.5}
cd "$REPO"
LOG=$TMP/job.out
JOB=$(env "$MARK" JAX_NUM_CPU_DEVICES=1 sbatch --parsable --ntasks=2 --cpus-per-task=1 \
  --partition=main --output="$LOG" experiments/slurm/train.sbatch "${OVERRIDES[@]}" \
  --workdir="$TMP/slurm_run" --config.data.data_dir="$TMP/tfds")
JOBS+=("$JOB")
say "submitted job $JOB: 2 tasks of experiments/slurm/train.sbatch ${OVERRIDES[*]}"

state() { scontrol show job "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
logged_step() { # The last step whose train loss the job logged (0 before the first).
  { grep -o '\] \[[0-9]*\] .*train/loss' "$LOG" 2>/dev/null || true; } |
    sed -E 's/^\] \[([0-9]+)\].*/\1/' | tail -1 | grep . || echo 0
}

# 2. Preemption: a job in the higher-priority partition takes the node, at step 12 of 24
# (train and eval steps compiled by then: the tasks stop within a step of the SIGTERM).
wait_for 'job step 12' "(( \$(logged_step) >= 12 )) || [[ \$(state $JOB) != RUNNING && \$(state $JOB) != PENDING ]]"
[[ $(state "$JOB") == RUNNING ]] || die "job $JOB is $(state "$JOB") before the preemption"
say "job $JOB at step $(logged_step): submitting a job to partition 'urgent', which preempts it"
URGENT=$(env "$MARK" sbatch --parsable --partition=urgent --ntasks=2 --output="$TMP/urgent.out" \
  --wrap 'echo "urgent job $SLURM_JOB_ID ran on $SLURM_JOB_NODELIST"; sleep 2')
JOBS+=("$URGENT")
wait_for 'the urgent job to finish' "[[ \$(state $URGENT) == COMPLETED ]]"
say "$(cat "$TMP/urgent.out")"
# Wait for an end state: between the preemption and the restart the job passes through
# PREEMPTED, REQUEUED, PENDING, CONFIGURING (and scontrol may miss a poll), none of them an end.
ended() { [[ $(state "$1") =~ ^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE)$ ]]; }
wait_for "job $JOB to finish" "ended $JOB"
record=$(scontrol show job "$JOB")
echo "--- the job's log ($LOG), training lines thinned:"
grep -vE '\] \[[0-9]+\] .*train/|reader.py|logging_logger.py|dataset_info.py' "$LOG" | cut -c1-220
echo "--- scontrol show job $JOB:"
echo "$record" | grep -E 'JobState|Restarts|RunTime|SubmitTime|StartTime'
[[ $(state "$JOB") == COMPLETED ]] || die "job $JOB ended $(state "$JOB")"
restarts=$(echo "$record" | grep -o 'Restarts=[0-9]*' | cut -d= -f2)
((restarts >= 1)) || die "job $JOB was not requeued (Restarts=$restarts)"
grep -q 'Stopped at step' "$LOG" || die "the job's tasks did not checkpoint on the preemption"

# 3. The reference: one process, two devices, the same config.
say 'training the same config in one process with 2 devices'
# In the background: a trapped signal ends `wait` at once (not a foreground command).
JAX_NUM_CPU_DEVICES=2 "$PYTHON" -m jaxattr.main "${OVERRIDES[@]}" --workdir="$TMP/reference" \
  --config.data.data_dir="$TMP/tfds" >"$TMP/reference.out" 2>&1 &
REFERENCE=$!
wait "$REFERENCE" || die "the 1-process run failed: $(tail -5 "$TMP/reference.out")"
REFERENCE=
"$PYTHON" - "$TMP/slurm_run" "$TMP/reference" <<'EOF'
"""Prints the two runs' metrics side by side; exits 1 unless all agree to 1e-5.

results.json tests the best state (by validation); the validation metrics that metrics.jsonl
logs at every epoch's end (steps 8, 16, 24) cover the states after the preemption too.
"""
import json
import math
import sys
from pathlib import Path

TOLERANCE = 1e-5
runs = [Path(p) for p in sys.argv[1:]]


def leaves(tree, prefix=''):
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from leaves(value, f'{prefix}{key}/')
  else:
    yield prefix.rstrip('/'), tree


def difference(a, b):
  if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):  # e.g. a grid's (h, w)
    return max((difference(x, y) for x, y in zip(a, b)), default=0.0)
  if a is None or b is None or isinstance(a, str | list):
    return 0.0 if a == b else math.inf
  return abs(a - b)


results = [json.loads((run / 'results.json').read_text()) for run in runs]
got, want = (dict(leaves(r['test'])) for r in results)
print(f'{"test metric":<16}{"slurm, 2 tasks, requeued":>26}{"1 process, 2 devices":>22}')
for key in ('map_voc', 'map_sklearn', 'ma', 'acc', 'prec', 'rec', 'f1', 'num_examples'):
  print(f'{key:<16}{got[key]:>26.6f}{want[key]:>22.6f}')
diffs = [difference(got.get(k), want.get(k)) for k in sorted(set(got) | set(want))]
diffs.append(difference(results[0]['best_step'], results[1]['best_step']))
print(f'best step (tested above): {results[0]["best_step"]} and {results[1]["best_step"]}')

rows = []
for run in runs:
  lines = (run / 'metrics.jsonl').read_text().splitlines()
  rows.append({r['step']: r for r in map(json.loads, lines) if 'val/map_voc' in r})
if list(rows[0]) != list(rows[1]):
  sys.exit(f'MISMATCH: validated at steps {list(rows[0])} and {list(rows[1])}')
for step in rows[0]:
  a, b = rows[0][step], rows[1][step]
  step_diffs = [difference(a.get(k), b.get(k)) for k in set(a) | set(b) if k.startswith('val/')]
  diffs += step_diffs
  print(f'validation at step {step:>2}: map_voc {a["val/map_voc"]:.6f} and '
        f'{b["val/map_voc"]:.6f}, largest difference of {len(step_diffs)} metrics '
        f'{max(step_diffs):.2e}')
worst = max(diffs)
verdict = 'OK' if worst <= TOLERANCE else 'MISMATCH'
print(f'{verdict}: {len(diffs)} metrics (test, incl. per attribute; validation at every epoch), '
      f'largest difference {worst:.2e} (tolerance {TOLERANCE:g})')
sys.exit(verdict != 'OK')
EOF
say "done: job $JOB preempted and requeued (Restarts=$restarts), then finished"
exit 0
}
