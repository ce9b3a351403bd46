#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for `fastfvae sweep --executor slurm` and its tests.
#
#   bash scripts/slurm_local.sh start    install slurm-wlm and munge if missing (apt-get, needs root),
#                                        write a minimal slurm.conf, start munged, slurmctld, slurmd
#   bash scripts/slurm_local.sh stop     stop the three daemons
#   bash scripts/slurm_local.sh status   sinfo of the cluster; exit status 0 when it is up
#
# The configuration is the smallest that schedules job arrays and requeues them: the node is this
# host (all its CPUs, one partition "debug"), processes are tracked through /proc
# (proctrack/linuxproc: no cgroups needed, so it works in a container), CPUs are consumable
# (select/cons_tres, CR_Core), memory is not, no accounting, requeue allowed (JobRequeue=1).
# Daemons run as root and keep their state, logs and pid files in $FASTFVAE_SLURM_DIR
# (default /tmp/fastfvae-slurm). slurm.conf goes where the client commands look for it
# (/etc/slurm/slurm.conf); one not written by this script is never overwritten.
set -euo pipefail

STATE_DIR=${FASTFVAE_SLURM_DIR:-/tmp/fastfvae-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by fastfvae scripts/slurm_local.sh"
NODE=$(hostname -s)

say() { echo "slurm_local: $*" >&2; }

install_if_missing() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return
  fi
  if [ "$(id -u)" != 0 ]; then
    say "slurm-wlm and munge are not installed and this is not root: cannot install them"; exit 1
  fi
  say "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q slurm-wlm munge >/dev/null
}

write_conf() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    say "$CONF exists and was not written by this script: using it as it is"; return
  fi
  local cpus memory_mb
  cpus=$(nproc --all)
  memory_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
  mkdir -p /etc/slurm "$STATE_DIR/state" "$STATE_DIR/spool"
  cat > "$CONF" <<EOF
$MARK
ClusterName=fastfvae-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
# A requeued job may start again once the old job's credential expires (default 120 s); 10 s
# keeps a requeue quick on a single node.
AuthInfo=cred_expire=10
KillWait=15
MinJobAge=600
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
  say "munged did not start"; exit 1
}

is_up() { sinfo -h -o '%T' 2>/dev/null | grep -qE 'idle|mix|alloc'; }

start() {
  install_if_missing
  write_conf
  start_munge
  if is_up; then say "already running"; sinfo; return; fi
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd
  for _ in $(seq 60); do
    if is_up; then sinfo; return; fi
    sinfo -h -o '%T' 2>/dev/null | grep -qE 'down|drain' && scontrol update nodename="$NODE" state=resume 2>/dev/null || true
    sleep 0.5
  done
  say "the node did not come up; see $STATE_DIR/slurmctld.log and $STATE_DIR/slurmd.log"; exit 1
}

stop_daemon() {  # name, pid file
  [ -f "$2" ] || return 0
  local pid; pid=$(cat "$2")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  say "$1 (pid $pid) did not stop"
}

stop() {
  stop_daemon slurmd "$STATE_DIR/slurmd.pid"
  stop_daemon slurmctld "$STATE_DIR/slurmctld.pid"
  stop_daemon munged /run/munge/munged.pid
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if is_up; then sinfo; else say "not running"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
