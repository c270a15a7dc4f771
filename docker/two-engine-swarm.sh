#!/usr/bin/env bash
# Two Docker engines on this machine, each in its own network namespace with its own data root, joined
# into one Swarm: what `crossback simulate --backend swarm` needs to place devices on two "machines".
#
#   eval "$(docker/two-engine-swarm.sh up IMAGE...)"   # prints: export DOCKER_HOST=unix://... (the manager)
#   docker/two-engine-swarm.sh down                    # engines stopped, namespaces and data removed
#
# - engine `a` (the manager) at 10.251.0.2 and engine `b` (a worker) at 10.251.0.3, on a bridge `cbsw0`
#   whose host side is 10.251.0.1: the simulator's relay listens there and both engines reach it;
# - each engine's node gets the label `engine=a|b` and `crossback.engine=<its API socket>`, which the
#   swarm backend uses to kill, pause and inspect the containers that engine runs; add your own labels
#   with CROSSBACK_SWARM_LABELS_A / _B (e.g. "class=jetson");
# - overlay2 storage where the kernel has it (every container shares the image's layers), vfs otherwise;
# - the IMAGEs are copied in from the engine at $DOCKER_HOST (docker save | docker load): the engines'
#   namespaces have no route to a registry.
# Needs root, dockerd (Debian's docker.io) and iproute2. Nothing is left behind by `down`.
set -euo pipefail
ROOT=${CROSSBACK_SWARM_ROOT:-/tmp/cbswarm}
DOCKER=/usr/bin/docker
SUBNET=10.251.0
log() { echo "two-engine-swarm: $*" >&2; }

sock() { echo "unix://$ROOT/$1/docker.sock"; }

down() {
  for e in a b; do
    if [ -f "$ROOT/$e/dockerd.pid" ]; then
      DOCKER_HOST=$(sock $e) $DOCKER swarm leave --force >/dev/null 2>&1 || true
      pid=$(cat "$ROOT/$e/dockerd.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    ip netns del "cbsw-$e" 2>/dev/null || true
    ip link del "cbsw-$e-h" 2>/dev/null || true
    # a stopped engine can leave its containers' mounts behind
    grep -o " $ROOT/$e/[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  done
  ip link del cbsw0 2>/dev/null || true
  while iptables -D FORWARD -i cbsw0 -o cbsw0 -j ACCEPT 2>/dev/null; do :; done
  rm -rf "$ROOT"
}

engine_up() {  # name, address, storage driver
  local e=$1 addr=$2 driver=$3
  ip netns add "cbsw-$e"
  ip link add "cbsw-$e-h" type veth peer name eth0 netns "cbsw-$e"
  ip link set "cbsw-$e-h" master cbsw0 up
  ip -n "cbsw-$e" addr add "$addr/24" dev eth0
  ip -n "cbsw-$e" link set eth0 up
  ip -n "cbsw-$e" link set lo up
  ip -n "cbsw-$e" route add default via "$SUBNET.1"
  mkdir -p "$ROOT/$e"
  # nsenter, not `ip netns exec`: that remounts /sys, and dockerd would find no cgroups
  # and a UTS namespace of its own, so that the Swarm's node is called engine-a / engine-b
  nohup nsenter --net="/run/netns/cbsw-$e" unshare --uts sh -c 'hostname "$0"; exec "$@"' "engine-$e" dockerd --host "$(sock $e)" --data-root "$ROOT/$e/data" \
    --exec-root "$ROOT/$e/exec" --pidfile "$ROOT/$e/dockerd.pid" --storage-driver "$driver" \
    --cgroup-parent "cbsw-$e" >"$ROOT/$e/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do DOCKER_HOST=$(sock $e) $DOCKER info >/dev/null 2>&1 && return 0; sleep 1; done
  log "engine $e did not start; see $ROOT/$e/dockerd.log"
  return 1
}

up() {
  [ "$(id -u)" = 0 ] || { log "needs root (network namespaces, dockerd)"; exit 1; }
  command -v dockerd >/dev/null || { log "no dockerd: apt-get install docker.io"; exit 1; }
  local source=${DOCKER_HOST:-}
  if [ -e "$ROOT" ]; then down; fi
  if ip link show cbsw0 >/dev/null 2>&1; then
    log "another two-engine Swarm is up (the bridge cbsw0 exists): take it down first with its CROSSBACK_SWARM_ROOT"
    exit 1
  fi
  mkdir -p "$ROOT"
  local driver=vfs
  grep -qw overlay /proc/filesystems && driver=overlay2
  ip link add cbsw0 type bridge
  ip addr add "$SUBNET.1/24" dev cbsw0
  ip link set cbsw0 up
  # an engine on this machine sets FORWARD's policy to DROP, and bridged frames pass through it
  iptables -I FORWARD -i cbsw0 -o cbsw0 -j ACCEPT
  engine_up a "$SUBNET.2" "$driver" && engine_up b "$SUBNET.3" "$driver" || { down; exit 1; }
  if [ "$driver" = overlay2 ] && grep -q "overlay2.*not supported\|failed to mount overlay" "$ROOT/a/dockerd.log"; then
    log "overlay2 did not work here; see $ROOT/a/dockerd.log"
  fi
  for image in "$@"; do
    [ -n "$source" ] || { log "DOCKER_HOST names no engine to copy $image from"; down; exit 1; }
    log "copying $image into both engines"
    DOCKER_HOST=$source $DOCKER save "$image" >"$ROOT/image.tar"
    DOCKER_HOST=$(sock a) $DOCKER load -q -i "$ROOT/image.tar" >&2
    DOCKER_HOST=$(sock b) $DOCKER load -q -i "$ROOT/image.tar" >&2
    rm -f "$ROOT/image.tar"
  done
  DOCKER_HOST=$(sock a) $DOCKER swarm init --advertise-addr "$SUBNET.2" >/dev/null
  token=$(DOCKER_HOST=$(sock a) $DOCKER swarm join-token -q worker)
  DOCKER_HOST=$(sock b) $DOCKER swarm join --token "$token" "$SUBNET.2:2377" >/dev/null
  for e in a b; do
    local id labels
    id=$(DOCKER_HOST=$(sock $e) $DOCKER info --format '{{.Swarm.NodeID}}')
    labels="engine=$e crossback.engine=$(sock $e)"
    [ $e = a ] && labels="$labels ${CROSSBACK_SWARM_LABELS_A:-}" || labels="$labels ${CROSSBACK_SWARM_LABELS_B:-}"
    for l in $labels; do DOCKER_HOST=$(sock a) $DOCKER node update --label-add "$l" "$id" >/dev/null; done
  done
  log "a Swarm of 2 engines ($driver): manager $(sock a) at $SUBNET.2, worker $(sock b) at $SUBNET.3"
  echo "export DOCKER_HOST=$(sock a)"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  *) echo "usage: $0 up [IMAGE...] | down" >&2; exit 2 ;;
esac
