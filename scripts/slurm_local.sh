#!/usr/bin/env bash
# A real, throw-away, single-node SLURM 22.05 cluster on this machine (Debian 12), for CI and for trying
# `python train.py -m hydra/launcher=slurm ...` without a real cluster. Needs root.
#
#   scripts/slurm_local.sh up       install missing packages, write configs, start the daemons (idempotent)
#   scripts/slurm_local.sh status   daemons, `scontrol ping`, `sinfo`, `squeue`
#   scripts/slurm_local.sh smoke    one `srun` and one `sbatch --wait` job, checked through `sacct`
#   scripts/slurm_local.sh down     cancel every job, stop the daemons this script started (by PID); keeps state
#   scripts/slurm_local.sh purge    down, then delete the cluster dir and the /etc/slurm files this script wrote
#   scripts/slurm_local.sh install  only the packages
#
# Daemons: munged, mariadbd + slurmdbd (accounting), slurmctld, slurmd, all started directly: there is no systemd
# here, and apt's policy-rc.d stops the packages from starting services. Accounting is not optional in practice:
# without it `sacct` fails and submitit never learns that a cancelled job died, so the Hydra sweep hangs forever.
# Usage: docs/scaling.md ("A local SLURM cluster"). The comments below name the failure each workaround avoids.
#
# Knobs (environment):
#   MIMIQ_SLURM_DIR         all state: logs, pid files, munge key/socket, MariaDB datadir   (/tmp/mimiq-slurm)
#   MIMIQ_SLURM_PARTITION   partition name                                                  (debug)
#   MIMIQ_SLURM_DB_PORT     MariaDB TCP port on 127.0.0.1                                   (13306)
#   MIMIQ_SLURM_DEF_MEM     DefMemPerCPU in MB; without it a job with no --mem takes ALL node memory (1024)
#   MIMIQ_SLURM_FORCE=1     overwrite an /etc/slurm/slurm.conf that this script did not write
set -euo pipefail

CLUSTER_DIR=$(realpath -m "${MIMIQ_SLURM_DIR:-/tmp/mimiq-slurm}")
PARTITION=${MIMIQ_SLURM_PARTITION:-debug}
DB_PORT=${MIMIQ_SLURM_DB_PORT:-13306}
DEF_MEM=${MIMIQ_SLURM_DEF_MEM:-1024}
CLUSTER_NAME=ci
DB_PASS=slurmci  # fixed throw-away password: the DB listens on 127.0.0.1 only, in a CI sandbox
MARKER="# written by mimiq scripts/slurm_local.sh -- single-node CI cluster"
# Debian's compiled-in config dir: sbatch/squeue/sacct, submitit and the jobs find it without SLURM_CONF.
ETC=/etc/slurm
NODE=$(hostname -s)
MUNGE_SOCK=$CLUSTER_DIR/munge/munge.socket
RUN=$CLUSTER_DIR/run
LOG=$CLUSTER_DIR/log
PACKAGES=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server mariadb-client)
T0=$EPOCHREALTIME

elapsed() { awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $T0 }"; }
log() { printf '[slurm_local %6ss] %s\n' "$(elapsed)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# wait_for SECONDS DESCRIPTION CMD...: retry CMD every 0.5 s until it succeeds or time is up.
wait_for() {
  local secs=$1 what=$2 i
  shift 2
  for ((i = 0; i < secs * 2; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "timed out after ${secs}s waiting for: $what"
  return 1
}

# pid_alive NAME: the pid file exists, holds a number, and /proc/PID/comm is the daemon's name. The comm check
# guards against a recycled PID: we must never signal a process we did not start.
pid_alive() {
  local name=$1 pidfile=$RUN/$1.pid pid comm
  [[ -f $pidfile ]] || return 1
  pid=$(tr -dc '0-9' <"$pidfile")
  [[ -n $pid && -r /proc/$pid/comm ]] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [[ $comm == "$name"* ]]
}

any_alive() {
  local p
  for p in "$@"; do [[ -e /proc/$p ]] && return 0; done
  return 1
}

# stop_pids NAME...: TERM each daemon, wait up to 30 s for all of them, then KILL what is left. Only the PIDs
# recorded in our own pid files; daemons stopped together must not depend on each other.
stop_pids() {
  local name pid i pids=()
  for name in "$@"; do
    if pid_alive "$name"; then
      pid=$(tr -dc '0-9' <"$RUN/$name.pid")
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$RUN/$name.pid"
  done
  for ((i = 0; i < 60; i++)); do
    any_alive "${pids[@]}" || return 0
    sleep 0.5
  done
  for pid in "${pids[@]}"; do
    if [[ -e /proc/$pid ]]; then
      log "pid $pid ignored TERM for 30 s: KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (slurmd setuids to the job's user); try sudo $0 $*"; }

installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }

cmd_install() {
  need_root install
  local missing=() p
  for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
  if ((${#missing[@]} == 0)); then
    log "packages already installed"
    return 0
  fi
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # --no-install-recommends: slurm-wlm would pull ~30 unused plugin packages (hdf5, rrd, ipmi, rocm, ...).
  # A fresh machine may have no package lists (or stale ones that 404): update once and retry.
  local apt_log=${TMPDIR:-/tmp}/slurm_local_apt.log
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$apt_log" 2>&1; then
    log "apt-get install failed; running apt-get update and retrying"
    apt-get update -q >>"$apt_log" 2>&1 || true
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$apt_log" 2>&1 ||
      { tail -20 "$apt_log" >&2; die "apt-get install failed (log above, all of it in $apt_log)"; }
  fi
  log "installed ${#missing[@]} packages"
}

no_active_jobs() { [[ -z $(squeue -h -t PD,R,CG,S,CF -o %A 2>/dev/null) ]]; }
node_state() { sinfo -h -n "$NODE" -o '%t' 2>/dev/null | head -1; }
node_ready() { [[ $(node_state) =~ ^(idle|mix|alloc) ]]; }
ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

healthy() {
  local d
  for d in munged mariadbd slurmdbd slurmctld slurmd; do pid_alive "$d" || return 1; done
  ctld_up && node_ready && sacctmgr -n list cluster >/dev/null 2>&1
}

# write_file DEST MODE: stdin to a temp file in DEST's dir, chmod, then rename, so no reader sees half a file.
write_file() {
  local dest=$1 mode=$2 tmp
  tmp=$(mktemp "$(dirname "$dest")/.$(basename "$dest").XXXXXX")
  cat >"$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dest"
}

start_munge() {
  # munged wants o+x on the socket dir (else "Socket is inaccessible") and a 0600 key. A private key and socket,
  # so a system munged (if any) is neither used nor disturbed.
  install -d -m 0755 "$CLUSTER_DIR/munge"
  if [[ ! -s $CLUSTER_DIR/munge/munge.key ]]; then
    mungekey --create --keyfile="$CLUSTER_DIR/munge/munge.key" 2>/dev/null ||
      dd if=/dev/urandom of="$CLUSTER_DIR/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 0600 "$CLUSTER_DIR/munge/munge.key"
  rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
  munged 9>&- --socket="$MUNGE_SOCK" --key-file="$CLUSTER_DIR/munge/munge.key" --pid-file="$RUN/munged.pid" \
    --log-file="$LOG/munged.log" --seed-file="$CLUSTER_DIR/munge/munge.seed" ||
    die "munged did not start; see $LOG/munged.log"
  wait_for 20 "munge round trip" bash -c "munge -S '$MUNGE_SOCK' -n | unmunge -S '$MUNGE_SOCK'" ||
    die "munge does not work; see $LOG/munged.log"
  log "munged up"
}

slurm_conf() {
  # The node line is whatever `slurmd -C` measures here: a RealMemory above the real one would drain the node.
  local node_line
  node_line=$(slurmd -C | head -1)
  [[ $node_line == NodeName=* ]] || die "slurmd -C printed no node line: $node_line"
  cat <<EOF
$MARKER
ClusterName=$CLUSTER_NAME
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# private munged socket; cred_expire also sets how long a requeued job waits before it restarts (default 120 s)
AuthInfo=socket=$MUNGE_SOCK,cred_expire=10
MpiDefault=none
# silences "Configured MailProg is invalid"
MailProg=/bin/true
# no cgroups (gVisor, no systemd): /proc based process tracking, no task containment, no usage sampling
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
# connections to slurmdbd do NOT use AuthInfo: they take the munge socket from here (else "Munge encode failed")
AccountingStoragePass=$MUNGE_SOCK
JobCompType=jobcomp/none
# 5 s scheduler passes (default 60 s): with cred_expire=10 a requeued job restarts in ~15 s instead of ~150 s
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# MB per CPU for jobs without --mem; otherwise such a job takes all node memory and array tasks run one by one
DefMemPerCPU=$DEF_MEM
# reject at submit time what no node can ever run (too many CPUs/nodes); otherwise such a job pends forever
# (Reason=PartitionConfig) and the Hydra sweep waits forever with it
EnforcePartLimits=ALL
ReturnToService=2
# seconds between the time-limit TERM and KILL
KillWait=5
StateSaveLocation=$CLUSTER_DIR/state
SlurmdSpoolDir=$CLUSTER_DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$node_line State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_accounting() {
  local my=$CLUSTER_DIR/mysql sock=$RUN/mariadb.sock
  if [[ ! -d $my/mysql ]]; then
    log "initialising MariaDB datadir $my"
    mariadb-install-db --no-defaults --user=root --datadir="$my" --auth-root-authentication-method=socket \
      --skip-test-db >"$LOG/mariadb-install-db.log" 2>&1 ||
      die "mariadb-install-db failed; see $LOG/mariadb-install-db.log"
  fi
  # mariadbd does not daemonise: setsid + nohup detach it from this shell's session and process group, so
  # neither a closing terminal nor a kill of the caller's group takes it down. It writes its own pid file.
  setsid nohup mariadbd 9>&- --no-defaults --user=root --datadir="$my" --socket="$sock" \
    --pid-file="$RUN/mariadbd.pid" --log-error="$LOG/mariadbd.log" --bind-address=127.0.0.1 --port="$DB_PORT" \
    --skip-name-resolve --innodb-lock-wait-timeout=900 --innodb-buffer-pool-size=256M \
    </dev/null >>"$LOG/mariadbd.out" 2>&1 &
  wait_for 60 "MariaDB" mariadb --no-defaults --socket="$sock" -u root -e 'select 1' ||
    die "MariaDB did not start; see $LOG/mariadbd.log"
  mariadb --no-defaults --socket="$sock" -u root -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY \
'$DB_PASS'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
  log "mariadbd up"
  # slurmdbd refuses a config readable by others: mode 0600, owner root (= SlurmUser).
  local dbd_conf
  dbd_conf=$(slurmdbd_conf)
  printf '%s\n' "$dbd_conf" | write_file "$ETC/slurmdbd.conf" 0600
  slurmdbd 9>&- || die "slurmdbd did not start; see $LOG/slurmdbd.log"
  wait_for 60 "slurmdbd (sacctmgr list cluster)" sacctmgr -n list cluster ||
    die "slurmdbd not answering; see $LOG/slurmdbd.log"
  # slurmctld registers the cluster itself; adding it first only avoids a race on the very first start.
  sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null 2>&1 || true
  log "slurmdbd up"
}

slurmdbd_conf() {
  cat <<EOF
$MARKER
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
}

# configs_current: the files in /etc/slurm are exactly what this script would write now (same cluster dir,
# same knobs, same node line), so a running cluster can be left alone.
configs_current() {
  [[ -f $ETC/slurm.conf && -f $ETC/slurmdbd.conf ]] &&
    diff -q <(slurm_conf) "$ETC/slurm.conf" >/dev/null && diff -q <(slurmdbd_conf) "$ETC/slurmdbd.conf" >/dev/null
}

cmd_up() {
  need_root up
  cmd_install
  local b
  for b in munged slurmctld slurmd slurmdbd mariadbd sinfo sbatch sacct sacctmgr; do
    command -v "$b" >/dev/null || die "$b not found after install"
  done
  if healthy; then
    if configs_current; then
      log "cluster already up and healthy ($CLUSTER_DIR); nothing to do"
      return 0
    fi
    log "cluster is up but its configs differ from what this script writes now: restarting it"
  fi
  # never clobber a real cluster's config
  if [[ -f $ETC/slurm.conf ]] && ! grep -qxF "$MARKER" "$ETC/slurm.conf" && [[ ${MIMIQ_SLURM_FORCE:-0} != 1 ]]; then
    die "$ETC/slurm.conf was not written by this script (a real cluster?); MIMIQ_SLURM_FORCE=1 overwrites it"
  fi
  # half-dead (or stopped) cluster: stop whatever is left of it, then start everything in order
  cmd_down quiet
  # SlurmctldHost and NodeName must resolve
  if ! getent hosts "$NODE" >/dev/null; then
    log "adding 127.0.0.1 $NODE to /etc/hosts"
    echo "127.0.0.1 $NODE" >>/etc/hosts
  fi
  install -d -m 0755 "$CLUSTER_DIR" "$RUN"
  install -d "$LOG" "$CLUSTER_DIR/state" "$CLUSTER_DIR/spool" "$ETC"
  start_munge
  # slurm.conf must say accounting_storage/slurmdbd before any sacctmgr call (else sacctmgr: "You are not running a
  # supported accounting_storage plugin")
  local conf
  conf=$(slurm_conf) # not piped: a failing slurm_conf must stop us before anything is written
  printf '%s\n' "$conf" | write_file "$ETC/slurm.conf" 0644
  start_accounting
  slurmctld 9>&- || die "slurmctld did not start; see $LOG/slurmctld.log"
  wait_for 60 "slurmctld (scontrol ping)" ctld_up || die "slurmctld not answering; see $LOG/slurmctld.log"
  log "slurmctld up"
  slurmd 9>&- || die "slurmd did not start; see $LOG/slurmd.log"
  if ! wait_for 60 "node $NODE idle" node_ready; then
    # e.g. a node left DOWN/DRAINED in the saved state from an earlier run
    scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
    wait_for 30 "node $NODE idle after resume" node_ready || {
      sinfo -N -h -o '%N %t %E' >&2 || true
      die "node $NODE not idle; see $LOG/slurmd.log and $LOG/slurmctld.log"
    }
  fi
  wait_for 30 "sacct" sacct -n -X -S now >/dev/null || die "sacct does not work; see $LOG/slurmdbd.log"
  log "slurmd up; $(sinfo -h -o 'partition %P %a, %D node %t %N')"
  log "cluster up in $(elapsed) s ($CLUSTER_DIR)"
}

cmd_down() {
  local quiet=${1:-}
  need_root down
  if pid_alive slurmctld; then
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
      log "cancelling jobs: $jobs"
      # shellcheck disable=SC2086  # one word per job id
      scancel $jobs 2>/dev/null || true
      wait_for 30 "jobs to end" no_active_jobs || true
    fi
  fi
  # reverse start order: node and controller first, then slurmdbd (which flushes to MariaDB), then the rest
  stop_pids slurmd slurmctld
  stop_pids slurmdbd
  stop_pids mariadbd munged
  [[ -n $quiet ]] || log "cluster down in $(elapsed) s (state kept in $CLUSTER_DIR; 'purge' deletes it)"
}

cmd_purge() {
  need_root purge
  cmd_down
  rm -rf "$CLUSTER_DIR"
  local f
  for f in "$ETC/slurm.conf" "$ETC/slurmdbd.conf"; do
    if [[ -f $f ]] && grep -qxF "$MARKER" "$f"; then rm -f "$f"; fi
  done
  log "purged $CLUSTER_DIR and our files in $ETC (packages stay installed)"
}

cmd_status() {
  local d rc=0
  for d in munged mariadbd slurmdbd slurmctld slurmd; do
    if pid_alive "$d"; then
      printf '%-10s running (pid %s)\n' "$d" "$(tr -dc '0-9' <"$RUN/$d.pid")"
    else
      printf '%-10s not running\n' "$d"
      rc=1
    fi
  done
  command -v scontrol >/dev/null || { echo "slurm not installed"; return 1; }
  scontrol ping 2>&1 || rc=1
  sinfo 2>&1 || rc=1
  squeue 2>&1 || rc=1
  healthy || rc=1
  echo "cluster dir: $CLUSTER_DIR; healthy: $([[ $rc == 0 ]] && echo yes || echo no)"
  return $rc
}

cmd_smoke() {
  local out=$CLUSTER_DIR/smoke id i
  install -d -m 0777 "$out"
  srun -N1 -n1 -t 1 hostname >&2 || die "srun failed"
  # shellcheck disable=SC2016  # $SLURM_JOB_ID expands inside the job, not here
  id=$(sbatch --parsable --wait -o "$out/%j.out" -c1 --mem=100M -t 1 \
    --wrap 'echo "hello from job $SLURM_JOB_ID on $(hostname)"') || die "sbatch --wait failed"
  cat "$out/$id.out" >&2
  for ((i = 0; i < 40; i++)); do
    [[ $(sacct -n -X -P -j "$id" -o State 2>/dev/null) == COMPLETED ]] && break
    sleep 0.5
  done
  [[ $(sacct -n -X -P -j "$id" -o State) == COMPLETED ]] || die "sacct does not show job $id COMPLETED"
  log "smoke test passed in $(elapsed) s"
}

# One operation at a time on a cluster dir: two concurrent `up`s would start every daemon twice. Every daemon is
# started with `9>&-`: a daemon that inherited the lock's fd would hold the lock for as long as it runs.
with_lock() {
  exec 9>"$CLUSTER_DIR.lock"
  flock -w 300 9 || die "another slurm_local.sh holds $CLUSTER_DIR.lock"
  "$@"
}

case ${1:-} in
  install) with_lock cmd_install ;;
  up) with_lock cmd_up ;;
  down) with_lock cmd_down ;;
  purge) with_lock cmd_purge ;;
  status) cmd_status ;;
  smoke) cmd_smoke ;;
  *)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
