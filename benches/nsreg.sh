# Sourced by benches/lazy.sh and benches/pull.sh: a docker-registry in a
# network namespace of the caller's own, reached over a veth pair, with a
# scratch ext4 on a loop-mounted sparse file. Nothing else is contacted.
#
#   nsreg_up NAME WORK [RATE [DELAY]]
#
# RATE (e.g. 100mbit) shapes the registry's answers with tc tbf; DELAY
# (e.g. 10ms, one way) puts a netem delay in front (needs sch_netem).
# Sets: fs (the scratch mount), reg (ADDR:5000), host_if (count the bytes
# received with nsreg_rx). Installs an EXIT trap that tears everything down.

nsreg_cleanup() {
  set +e
  [ -n "${reg_pid:-}" ] && kill "$reg_pid" 2>/dev/null && wait "$reg_pid" 2>/dev/null
  for m in $(awk -v p="$fs/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m"
  done
  mountpoint -q "$fs" && umount "$fs"
  rm -f "$nsreg_work/fs.img"
  ip link del "$host_if" 2>/dev/null
  ip netns del "$nsreg_ns" 2>/dev/null
  true
}

nsreg_up() {
  local name=$1 rate=${3:-} delay=${4:-} ns_if addr
  nsreg_work=$2
  nsreg_ns=$name-$$
  host_if=${name:0:4}$$h
  ns_if=${name:0:4}$$n
  addr=10.231.$(($$ % 250)).2
  reg=$addr:5000
  fs=$nsreg_work/fs
  trap nsreg_cleanup EXIT
  trap 'exit 130' INT TERM
  ip netns add "$nsreg_ns"
  ip link add "$host_if" type veth peer name "$ns_if"
  ip link set "$ns_if" netns "$nsreg_ns"
  ip addr add "${addr%.2}.1/30" dev "$host_if"
  ip link set "$host_if" up
  ip -n "$nsreg_ns" addr add "$addr/30" dev "$ns_if"
  ip -n "$nsreg_ns" link set "$ns_if" up
  ip -n "$nsreg_ns" link set lo up
  if [ -n "$delay" ]; then
    ip netns exec "$nsreg_ns" tc qdisc add dev "$ns_if" root handle 1: netem delay "$delay" ||
      { echo "tc netem is not available here (sch_netem): run without DELAY" >&2; exit 2; }
    ip netns exec "$nsreg_ns" tc qdisc add dev "$ns_if" parent 1:1 handle 10: \
      tbf rate "${rate:-10gbit}" burst 64kb latency 100ms
  elif [ -n "$rate" ]; then
    ip netns exec "$nsreg_ns" tc qdisc add dev "$ns_if" root tbf rate "$rate" burst 64kb latency 100ms
  fi

  mkdir -p "$fs"
  mountpoint -q "$fs" && umount "$fs"
  truncate -s 24G "$nsreg_work/fs.img"
  mkfs.ext4 -q -F -m 0 "$nsreg_work/fs.img"
  mount -o loop "$nsreg_work/fs.img" "$fs"

  cat >"$fs/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $fs/registry}}
http: {addr: $reg}
YML
  ip netns exec "$nsreg_ns" docker-registry serve "$fs/registry.yml" >/dev/null 2>&1 &
  reg_pid=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/$addr/5000") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "the registry did not start on $reg" >&2
  exit 1
}

# Bytes received from the namespace so far.
nsreg_rx() { cat "/sys/class/net/$host_if/statistics/rx_bytes"; }
