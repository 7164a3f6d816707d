#!/usr/bin/env bash
# A throw-away SLURM cluster on this machine (loopback only, fake GPUs), for trying the SLURM
# profile and for tests: one slurmctld and one slurmd per node, all on this host (each slurmd
# with its own node name and port), so that a job can span several nodes. Needs root on
# Debian/Ubuntu (installs slurmctld slurmd slurm-client munge with apt-get when missing).
#
#   scripts/local-slurm.sh start [--nodes N]
#                                   install (if missing), configure, start munged, slurmctld and
#                                   one slurmd per node (n1..nN, default 2), wait until every
#                                   node is idle (idempotent; another N restarts the daemons)
#   scripts/local-slurm.sh stop     cancel this cluster's jobs, stop every daemon, remove the
#                                   config, controller state, spool dirs, pid files and fake
#                                   GPUs (idempotent; the logs stay)
#   scripts/local-slurm.sh status   exit 0 when the controller answers; print daemons and nodes
#   scripts/local-slurm.sh env      print the exports a caller may want (SLURM_CONF)
#
# Everything (config, state, spool, logs, pid files, the private munge socket, fake GPU files)
# lives under one folder: $SALMON_WF_SLURM_DIR, default /var/tmp/salmon-wf-slurm. While the
# cluster runs, /etc/slurm/slurm.conf and /etc/slurm/gres.conf are symlinks to the files there
# (so sinfo/sbatch/snakemake need no environment); `stop` removes those links again, because
# with a slurm.conf present and no controller answering, every snakemake call waits ~10 s for
# `scontrol show config` (the SLURM executor plugin runs it when snakemake starts).
# Settings: SALMON_WF_SLURM_NODES (nodes, default 2; --nodes wins), SALMON_WF_SLURM_GPUS (fake
# GPUs per node, default 2), SALMON_WF_SLURM_WAIT (seconds to wait for each node, default 60),
# SALMON_WF_SLURMD_PORT_BASE (node ni's slurmd listens on BASE+i, default 17100),
# SALMON_WF_SLURM_MEM_HEADROOM_MB (memory kept from slurm, default: the larger of 512 MiB and
# 10% of RAM; the rest is split evenly over the nodes).
set -euo pipefail

DIR=${SALMON_WF_SLURM_DIR:-/var/tmp/salmon-wf-slurm}
NGPUS=${SALMON_WF_SLURM_GPUS:-2}
NNODES=${SALMON_WF_SLURM_NODES:-2}
PORT_BASE=${SALMON_WF_SLURMD_PORT_BASE:-17100}
WAIT_S=${SALMON_WF_SLURM_WAIT:-60}
PACKAGES=(slurmctld slurmd slurm-client munge)
ETC=$DIR/etc
CONF=$ETC/slurm.conf
GRES=$ETC/gres.conf
RUN=$DIR/run
LOG=$DIR/log
MUNGE_DIR=$DIR/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
MUNGE_PID=$MUNGE_DIR/munged.pid
MUNGE_LOG=$MUNGE_DIR/munged.log
MUNGE_KEY=${SALMON_WF_MUNGE_KEY:-/etc/munge/munge.key}
CTLD_PID=$RUN/slurmctld.pid
CTLD_LOG=$LOG/slurmctld.log
SYS_CONF=/etc/slurm/slurm.conf
SYS_GRES=/etc/slurm/gres.conf
HOST=$(hostname -s)
export SLURM_CONF=$CONF

# Per node (n1..nN): slurmd's pid file and log (slurm.conf names them with %n, the node name).
slurmd_pid() { echo "$RUN/slurmd-$1.pid"; }
slurmd_log() { echo "$LOG/slurmd-$1.log"; }
node_names() { seq -f 'n%g' 1 "$NNODES"; }

say() { echo "local-slurm: $*" >&2; }
die() {
  say "ERROR: $1"
  shift
  local f
  for f in "$@"; do
    if [ -s "$f" ]; then
      echo "---- last lines of $f ----" >&2
      tail -n 25 "$f" >&2
    fi
  done
  [ "${CMD:-}" = start ] && say "(any daemon this start launched is left running: '$0 stop' ends it)"
  exit 1
}

# proc_running PID NAME: PID is a live (not zombie) process whose command is NAME.
proc_running() {
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 1
  [ "$(cat "/proc/$1/comm" 2>/dev/null || true)" = "$2" ] || return 1
  # a killed daemon can linger as a zombie until PID 1 reaps it
  ! awk '{ exit ($3 == "Z" || $3 == "X") ? 0 : 1 }' "/proc/$1/stat" 2>/dev/null
}

# pid_alive PIDFILE NAME: the pid file names a running NAME.
pid_alive() {
  [ -s "$1" ] || return 1
  proc_running "$(tr -dc '0-9' <"$1")" "$2"
}

# stop_pid PIDFILE NAME: SIGTERM, wait up to 15 s, then SIGKILL; no error if not running.
stop_pid() {
  local pidfile=$1 name=$2 pid i
  if pid_alive "$pidfile" "$name"; then
    pid=$(tr -dc '0-9' <"$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 30); do
      proc_running "$pid" "$name" || break
      sleep 0.5
    done
    if proc_running "$pid" "$name"; then
      say "$name (pid $pid) ignored SIGTERM for 15 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
    say "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
}

# port_busy PORT: something accepts TCP connections on 127.0.0.1:PORT
port_busy() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# Before starting anything: the slurmctld or a node's slurmd port taken while that daemon of
# ours is not running means another SLURM (another SALMON_WF_SLURM_DIR, a system one) runs here.
check_ports() {
  local node port i=0
  if ! pid_alive "$CTLD_PID" slurmctld && port_busy 6817; then
    die "port 6817 is in use but slurmctld of $DIR is not running: another SLURM runs here; stop it first"
  fi
  for node in $(node_names); do
    i=$((i + 1))
    port=$((PORT_BASE + i))
    if ! pid_alive "$(slurmd_pid "$node")" slurmd && port_busy "$port"; then
      die "port $port (slurmd of node $node) is in use but that slurmd is not running: another SLURM runs here; stop it first"
    fi
  done
}

controller_answers() { timeout 15 sinfo -h -o %P >/dev/null 2>&1; }

node_state() { timeout 15 sinfo -h -N -n "$1" -o %T 2>/dev/null | head -n 1; }

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "needs root to install ${missing[*]}"
  say "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >"$LOG/apt.log" 2>&1 || die "apt-get update failed" "$LOG/apt.log"
  # A policy-rc.d (present in containers) keeps the packages from starting their own daemons.
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >>"$LOG/apt.log" 2>&1 \
    || die "apt-get install ${PACKAGES[*]} failed" "$LOG/apt.log"
}


write_config() {
  local cpus mem_total headroom mem defmem gpu_last tmp_conf tmp_gres changed=1 node g i=0 nodes
  # Every slurmd sees all of the machine's cores, so every node has them all (the nodes share
  # them); the memory is split, so the nodes together do not promise more than there is.
  cpus=$(nproc)
  mem_total=$(free -m | awk '/^Mem:/ {print $2}')
  headroom=${SALMON_WF_SLURM_MEM_HEADROOM_MB:-$((mem_total / 10 > 512 ? mem_total / 10 : 512))}
  mem=$((mem_total - headroom))
  [ "$mem" -ge 256 ] || mem=$((mem_total / 2))
  mem=$((mem / NNODES))
  # jobs without --mem get DefMemPerCPU (at most 1 GiB per CPU), not the whole node
  defmem=$((mem / cpus < 1024 ? mem / cpus : 1024))
  gpu_last=$((NGPUS - 1))
  nodes=n1
  [ "$NNODES" -eq 1 ] || nodes="n[1-$NNODES]"
  tmp_conf=$(mktemp "$ETC/.slurm.conf.XXXXXX")
  tmp_gres=$(mktemp "$ETC/.gres.conf.XXXXXX")
  cat >"$tmp_conf" <<EOF
# Written by salmon-wf scripts/local-slurm.sh; rewritten on every start.
ClusterName=salmonwf
SlurmctldHost=$HOST(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
# several slurmd on one host: %n is the node name each one was started with (slurmd -N)
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$CTLD_LOG
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups, no accounting database
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# a finished job stays visible to squeue for MinJobAge seconds (snakemake polls with squeue)
MinJobAge=300
KillWait=5
InactiveLimit=0
GresTypes=gpu
DefMemPerCPU=$defmem
EOF
  printf '%s\n' "# Written by salmon-wf scripts/local-slurm.sh: empty files stand in for GPU devices." \
    "AutoDetect=off" >"$tmp_gres"
  for node in $(node_names); do
    i=$((i + 1))
    mkdir -p "$DIR/gpu/$node"
    for g in $(seq 0 "$gpu_last"); do : >>"$DIR/gpu/$node/fakegpu$g"; done
    # The names n1..nN do not resolve as host names: SLURM (and our launcher's rendezvous)
    # reaches a node at its NodeAddr.
    echo "NodeName=$node NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((PORT_BASE + i)) CPUs=$cpus RealMemory=$mem Gres=gpu:$NGPUS State=UNKNOWN" >>"$tmp_conf"
    echo "NodeName=$node Name=gpu File=$DIR/gpu/$node/fakegpu[0-$gpu_last]" >>"$tmp_gres"
  done
  cat >>"$tmp_conf" <<EOF
PartitionName=gpu Nodes=$nodes Default=YES MaxTime=INFINITE State=UP
PartitionName=cpu Nodes=$nodes Default=NO MaxTime=INFINITE State=UP
EOF
  if cmp -s "$tmp_conf" "$CONF" && cmp -s "$tmp_gres" "$GRES"; then changed=0; fi
  chmod 644 "$tmp_conf" "$tmp_gres"
  mv -f "$tmp_conf" "$CONF"
  mv -f "$tmp_gres" "$GRES"
  CONFIG_CHANGED=$changed
}

# /etc/slurm/{slurm,gres}.conf -> our files, unless someone else's files are there.
link_system_config() {
  local f target
  mkdir -p /etc/slurm
  for f in "$SYS_CONF:$CONF" "$SYS_GRES:$GRES"; do
    target=${f#*:}
    f=${f%%:*}
    if [ -L "$f" ] && [[ $(readlink "$f") == "$DIR"/* ]]; then
      continue
    fi
    # a regular file, or a live link to another instance's file: not ours (a dangling link is)
    if [ -e "$f" ]; then
      say "note: $f exists and is not ours; left alone. Callers must: $(print_env)"
      LINKED=0
      continue
    fi
    ln -sfn "$target" "$f"
  done
}

unlink_system_config() {
  local f
  for f in "$SYS_CONF" "$SYS_GRES"; do
    if [ -L "$f" ] && [[ $(readlink "$f") == "$DIR"/* ]]; then rm -f "$f"; fi
  done
}

ensure_munge_key() {
  if [ ! -s "$MUNGE_KEY" ]; then
    say "creating munge key $MUNGE_KEY"
    mkdir -p "$(dirname "$MUNGE_KEY")"
    dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
  fi
  chown munge:munge "$(dirname "$MUNGE_KEY")" "$MUNGE_KEY"
  chmod 700 "$(dirname "$MUNGE_KEY")"
  chmod 400 "$MUNGE_KEY"
}

start_munged() {
  pid_alive "$MUNGE_PID" munged && return 0
  # a private munged (own socket, pid, log, seed) so that a system munged, if any, is not touched
  mkdir -p "$MUNGE_DIR"
  chown munge:munge "$MUNGE_DIR"
  chmod 755 "$MUNGE_DIR"  # munged requires a world-searchable socket folder
  rm -f "$MUNGE_PID" "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET" --pid-file="$MUNGE_PID" \
    --log-file="$MUNGE_LOG" --seed-file="$MUNGE_DIR/munged.seed" --key-file="$MUNGE_KEY" \
    9>&- || die "munged did not start" "$MUNGE_LOG"
  wait_for_pid "$MUNGE_PID" munged 10 || die "munged did not start" "$MUNGE_LOG"
  munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1 \
    || die "munge credential round trip failed" "$MUNGE_LOG"
  say "started munged (pid $(cat "$MUNGE_PID"))"
}

wait_for_pid() {
  local i
  for i in $(seq 1 $(( $3 * 4 ))); do
    pid_alive "$1" "$2" && return 0
    sleep 0.25
  done
  return 1
}


# start_slurm_daemon NAME PIDFILE LOGFILE [ARGS...]: start /usr/sbin/NAME -f CONF ARGS unless
# the pid file names a running NAME.
start_slurm_daemon() {
  local name=$1 pidfile=$2 logfile=$3 out
  shift 3
  pid_alive "$pidfile" "$name" && return 0
  rm -f "$pidfile"
  out=$LOG/$(basename "$pidfile" .pid).out
  # 9>&-: the daemon must not inherit (and so keep holding) the lock
  "/usr/sbin/$name" -f "$CONF" "$@" >>"$out" 2>&1 9>&- || die "$name $* did not start" "$logfile" "$out"
  wait_for_pid "$pidfile" "$name" 15 || die "$name $* did not start" "$logfile" "$out"
  say "started $name${*:+ $*} (pid $(cat "$pidfile"))"
}

# slurmd_pidfiles: the pid files of every slurmd this folder has started, nodes no longer
# configured included (and run/slurmd.pid of the one-node layout of earlier versions).
slurmd_pidfiles() {
  local f
  for f in "$RUN"/slurmd-*.pid "$RUN"/slurmd.pid; do
    if [ -e "$f" ]; then echo "$f"; fi
  done
}

stop_slurmds() {
  local f
  for f in $(slurmd_pidfiles); do stop_pid "$f" slurmd; done
}

any_slurmd_alive() {
  local f
  for f in $(slurmd_pidfiles); do pid_alive "$f" slurmd && return 0; done
  return 1
}

wait_for_node() {
  local node=$1 deadline=$((SECONDS + WAIT_S)) state="" last_resume=-100
  while [ $SECONDS -lt $deadline ]; do
    state=$(node_state "$node" || true)
    case "$state" in
      idle | mixed | allocated | completing)
        say "node $node is $state"
        return 0 ;;
      *drain* | *down* | *fail*)
        # slurmd must have registered for resume to stick; retry every 5 s
        if [ $((SECONDS - last_resume)) -ge 5 ]; then
          timeout 15 scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
          last_resume=$SECONDS
        fi ;;
    esac
    sleep 0.5
  done
  die "node $node not idle after ${WAIT_S} s (state: '${state:-no answer}')" "$CTLD_LOG" "$(slurmd_log "$node")"
}

print_env() { echo "export SLURM_CONF=$CONF"; }

cmd_start() {
  local node
  mkdir -p "$DIR" "$ETC" "$RUN" "$LOG" "$DIR/state" "$DIR/spool"
  exec 9>"$DIR/.lock"
  flock -w 180 9 || die "another local-slurm.sh holds $DIR/.lock"
  install_packages
  write_config
  link_system_config
  ensure_munge_key
  if [ "$CONFIG_CHANGED" = 1 ] && { pid_alive "$CTLD_PID" slurmctld || any_slurmd_alive; }; then
    say "configuration changed: restarting slurmctld and the slurmd"
    stop_slurmds
    stop_pid "$CTLD_PID" slurmctld
  fi
  check_ports
  start_munged
  start_slurm_daemon slurmctld "$CTLD_PID" "$CTLD_LOG"
  for node in $(node_names); do
    mkdir -p "$DIR/spool/$node"
    start_slurm_daemon slurmd "$(slurmd_pid "$node")" "$(slurmd_log "$node")" -N "$node"
  done
  for node in $(node_names); do wait_for_node "$node"; done
  if [ "$LINKED" = 1 ]; then
    say "ready: partitions gpu (default) and cpu on nodes $(node_names | paste -sd ' ')"
  else
    say "ready; callers must: $(print_env)"
  fi
}

cmd_stop() {
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  flock -w 180 9 || die "another local-slurm.sh holds $DIR/.lock"
  local jobs
  # cancel this cluster's own jobs (their slurmstepd processes would outlive slurmd otherwise)
  if pid_alive "$CTLD_PID" slurmctld && command -v squeue >/dev/null; then
    jobs=$(timeout 15 squeue -h -o %i 2>/dev/null | tr '\n' ' ' || true)
    if [ -n "${jobs// /}" ]; then
      say "cancelling jobs of the local cluster: $jobs"
      # shellcheck disable=SC2086
      timeout 15 scancel $jobs 2>/dev/null || true
      for _ in $(seq 1 30); do
        [ -z "$(timeout 15 squeue -h -t R,CG -o %i 2>/dev/null)" ] && break
        sleep 0.5
      done
    fi
  fi
  stop_slurmds
  stop_pid "$CTLD_PID" slurmctld
  stop_pid "$MUNGE_PID" munged
  unlink_system_config
  # everything a start writes again: config, controller state, node spool dirs, fake GPUs
  rm -rf "$ETC" "$DIR/state" "$DIR/spool" "$DIR/gpu" "$RUN"
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  say "stopped (logs kept in $LOG)"
}

cmd_status() {
  if ! command -v sinfo >/dev/null; then
    say "slurm client tools not installed"
    return 1
  fi
  local d f
  for d in "munged:$MUNGE_PID" "slurmctld:$CTLD_PID"; do
    if pid_alive "${d#*:}" "${d%%:*}"; then
      echo "${d%%:*}: running (pid $(tr -dc '0-9' <"${d#*:}"))"
    else
      echo "${d%%:*}: not running"
    fi
  done
  for f in $(slurmd_pidfiles); do
    if pid_alive "$f" slurmd; then
      d=$(basename "$f" .pid)
      echo "slurmd ${d#slurmd-}: running (pid $(tr -dc '0-9' <"$f"))"
    fi
  done
  # without our slurmctld, sinfo would only wait ~10 s to fail
  if ! pid_alive "$CTLD_PID" slurmctld || ! controller_answers; then
    say "the local cluster does not answer"
    return 1
  fi
  sinfo -N -o '%N %P %a %T %G %c %m'
}

LINKED=1
CMD=${1:-}
[ $# -eq 0 ] || shift
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NNODES=${2:-}; shift $(($# > 1 ? 2 : 1)) ;;
    --nodes=*) NNODES=${1#--nodes=}; shift ;;
    *) echo "local-slurm: unknown option '$1'" >&2; exit 2 ;;
  esac
done
if ! [[ $NNODES =~ ^[1-9][0-9]?$ ]]; then
  echo "local-slurm: the number of nodes must be 1..99, not '$NNODES'" >&2
  exit 2
fi
case "$CMD" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) print_env ;;
  *)
    echo "usage: $0 start [--nodes N] | stop | status | env" >&2
    exit 2 ;;
esac
