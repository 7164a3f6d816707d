#!/usr/bin/env bash
# A throw-away one-node SLURM cluster on this machine (loopback only, fake GPUs), for trying the
# SLURM profile and for tests. Needs root on Debian/Ubuntu (installs slurmctld slurmd slurm-client
# munge with apt-get when they are missing).
#
#   scripts/local-slurm.sh start    install (if missing), configure, start munged/slurmctld/slurmd,
#                                   wait until the node is idle (idempotent)
#   scripts/local-slurm.sh stop     cancel this cluster's jobs, stop the three daemons (idempotent)
#   scripts/local-slurm.sh status   exit 0 when the controller answers; print partitions and node
#   scripts/local-slurm.sh env      print the exports a caller may want (SLURM_CONF)
#
# Everything (config, state, spool, logs, pid files, the private munge socket, fake GPU files)
# lives under one folder: $SALMON_WF_SLURM_DIR, default /var/tmp/salmon-wf-slurm. While the
# cluster runs, /etc/slurm/slurm.conf and /etc/slurm/gres.conf are symlinks to the files there
# (so sinfo/sbatch/snakemake need no environment); `stop` removes those links again, because
# with a slurm.conf present and no controller answering, every snakemake call waits ~10 s for
# `scontrol show config` (the SLURM executor plugin runs it when snakemake starts).
# Settings: SALMON_WF_SLURM_GPUS (fake GPUs, default 2), SALMON_WF_SLURM_WAIT (seconds to wait
# for the node, default 60), SALMON_WF_SLURM_MEM_HEADROOM_MB (memory kept from slurm, default:
# the larger of 512 MiB and 10% of RAM).
set -euo pipefail

DIR=${SALMON_WF_SLURM_DIR:-/var/tmp/salmon-wf-slurm}
NGPUS=${SALMON_WF_SLURM_GPUS:-2}
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
SLURMD_PID=$RUN/slurmd.pid
CTLD_LOG=$LOG/slurmctld.log
SLURMD_LOG=$LOG/slurmd.log
SYS_CONF=/etc/slurm/slurm.conf
SYS_GRES=/etc/slurm/gres.conf
NODE=$(hostname -s)
export SLURM_CONF=$CONF

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

# Before starting anything: slurmctld/slurmd ports taken while our daemons are not running
# means another SLURM (another SALMON_WF_SLURM_DIR, a system one) runs on this machine.
check_ports() {
  local d name port pidfile
  for d in slurmctld:6817:"$CTLD_PID" slurmd:6818:"$SLURMD_PID"; do
    IFS=: read -r name port pidfile <<<"$d"
    if ! pid_alive "$pidfile" "$name" && port_busy "$port"; then
      die "port $port is in use but $name of $DIR is not running: another SLURM runs here; stop it first"
    fi
  done
}

controller_answers() { timeout 15 sinfo -h -o %P >/dev/null 2>&1; }

node_state() { timeout 15 sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1; }

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
  local cpus mem_total headroom mem defmem gpu_last tmp_conf tmp_gres changed=1
  cpus=$(nproc)
  mem_total=$(free -m | awk '/^Mem:/ {print $2}')
  headroom=${SALMON_WF_SLURM_MEM_HEADROOM_MB:-$(( mem_total / 10 > 512 ? mem_total / 10 : 512 ))}
  mem=$(( mem_total - headroom ))
  [ "$mem" -ge 256 ] || mem=$(( mem_total / 2 ))
  # jobs without --mem get DefMemPerCPU (at most 1 GiB per CPU), not the whole node
  defmem=$(( mem / cpus < 1024 ? mem / cpus : 1024 ))
  gpu_last=$(( NGPUS - 1 ))
  mkdir -p "$DIR/gpu"
  for i in $(seq 0 "$gpu_last"); do : >>"$DIR/gpu/fakegpu$i"; done
  tmp_conf=$(mktemp "$ETC/.slurm.conf.XXXXXX")
  tmp_gres=$(mktemp "$ETC/.gres.conf.XXXXXX")
  cat >"$tmp_conf" <<EOF
# Written by salmon-wf scripts/local-slurm.sh; rewritten on every start.
ClusterName=salmonwf
SlurmctldHost=$NODE(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$CTLD_LOG
SlurmdLogFile=$SLURMD_LOG
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
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:$NGPUS State=UNKNOWN
PartitionName=gpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=cpu Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
EOF
  cat >"$tmp_gres" <<EOF
# Written by salmon-wf scripts/local-slurm.sh: empty files stand in for GPU devices.
AutoDetect=off
NodeName=$NODE Name=gpu File=$DIR/gpu/fakegpu[0-$gpu_last]
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

start_slurm_daemon() {
  local name=$1 pidfile=$2 logfile=$3
  pid_alive "$pidfile" "$name" && return 0
  rm -f "$pidfile"
  # 9>&-: the daemon must not inherit (and so keep holding) the lock
  "/usr/sbin/$name" -f "$CONF" >>"$LOG/$name.out" 2>&1 9>&- || die "$name did not start" "$logfile" "$LOG/$name.out"
  wait_for_pid "$pidfile" "$name" 15 || die "$name did not start" "$logfile" "$LOG/$name.out"
  say "started $name (pid $(cat "$pidfile"))"
}

wait_for_node() {
  local deadline=$(( SECONDS + WAIT_S )) state="" last_resume=-100
  while [ $SECONDS -lt $deadline ]; do
    state=$(node_state || true)
    case "$state" in
      idle | mixed | allocated | completing)
        say "node $NODE is $state"
        return 0 ;;
      *drain* | *down* | *fail*)
        # slurmd must have registered for resume to stick; retry every 5 s
        if [ $(( SECONDS - last_resume )) -ge 5 ]; then
          timeout 15 scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
          last_resume=$SECONDS
        fi ;;
    esac
    sleep 0.5
  done
  die "node $NODE not idle after ${WAIT_S} s (state: '${state:-no answer}')" "$CTLD_LOG" "$SLURMD_LOG"
}

print_env() { echo "export SLURM_CONF=$CONF"; }

cmd_start() {
  mkdir -p "$DIR" "$ETC" "$RUN" "$LOG" "$DIR/state" "$DIR/spool"
  exec 9>"$DIR/.lock"
  flock -w 180 9 || die "another local-slurm.sh holds $DIR/.lock"
  install_packages
  write_config
  link_system_config
  ensure_munge_key
  if [ "$CONFIG_CHANGED" = 1 ] && { pid_alive "$CTLD_PID" slurmctld || pid_alive "$SLURMD_PID" slurmd; }; then
    say "configuration changed: restarting slurmd and slurmctld"
    stop_pid "$SLURMD_PID" slurmd
    stop_pid "$CTLD_PID" slurmctld
  fi
  check_ports
  start_munged
  start_slurm_daemon slurmctld "$CTLD_PID" "$CTLD_LOG"
  start_slurm_daemon slurmd "$SLURMD_PID" "$SLURMD_LOG"
  wait_for_node
  if [ "$LINKED" = 1 ]; then
    say "ready: partitions gpu (default) and cpu on node $NODE"
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
  stop_pid "$SLURMD_PID" slurmd
  stop_pid "$CTLD_PID" slurmctld
  stop_pid "$MUNGE_PID" munged
  unlink_system_config
  say "stopped"
}

cmd_status() {
  if ! command -v sinfo >/dev/null; then
    say "slurm client tools not installed"
    return 1
  fi
  local d
  for d in "munged:$MUNGE_PID" "slurmctld:$CTLD_PID" "slurmd:$SLURMD_PID"; do
    if pid_alive "${d#*:}" "${d%%:*}"; then
      echo "${d%%:*}: running (pid $(tr -dc '0-9' <"${d#*:}"))"
    else
      echo "${d%%:*}: not running"
    fi
  done
  # without our slurmctld, sinfo would only wait ~10 s to fail
  if ! pid_alive "$CTLD_PID" slurmctld || ! controller_answers; then
    say "the local cluster does not answer"
    return 1
  fi
  sinfo -o '%P %a %D %T %N %G %c %m'
}

LINKED=1
CMD=${1:-}
case "$CMD" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) print_env ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2 ;;
esac
