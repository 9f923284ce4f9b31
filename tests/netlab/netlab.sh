#!/usr/bin/env bash
# netlab.sh: a small test internet made of network namespaces, for the NAT traversal tests
# (swarm/tests/nat.rs), CI and the benchmark. Needs root, iproute2 and nftables.
#
#   netlab.sh up PREFIX HOME:KIND [HOME:KIND …]   build it (KIND: cone, symmetric, udp-blocked)
#   netlab.sh down PREFIX                         tear it down (idempotent; kills what runs inside)
#   netlab.sh check                               say what is missing, exit 1 if anything is
#
# What `up PREFIX a:cone b:symmetric` builds (every address lives only in these namespaces;
# the host's own interfaces and routes are never touched):
#
#   PREFIX-inet  the "internet": a bridge `seg` on 198.51.100.0/24 (TEST-NET-2), holding
#                198.51.100.2 (where the tests run the hub and coturn), 198.51.100.3 (coturn's
#                second address: a second STUN server, as real configurations list several, so a
#                peer can see whether its NAT maps per destination) and one port per router.
#                Its default route leads to a gateway that does not exist (.1): coturn
#                needs *a* default route, or its relay socket gets an error sending to an address
#                it cannot route (e.g. a home's private candidate) and it then drops the whole
#                allocation.
#   PREFIX-rN    home N's router: `wan` 198.51.100.(10+N)/24 on the segment, `lan` 10.N.0.1/24.
#                nftables: NAT out of `wan` (below), and a home router's firewall: forwarded
#                traffic goes out freely and only replies come in; nothing unsolicited reaches
#                the router itself either (so an early inbound packet leaves no conntrack entry
#                that would make the NAT pick another port for the outbound flow it races).
#   PREFIX-hN    home N: `eth0` 10.N.0.2/24, default route via its router.
#
# NAT kinds (RFC 4787 terms), on the router's `wan`:
#   cone         `masquerade`: one mapping per inside address and port, kept where free
#                (endpoint-independent mapping, address-and-port-dependent filtering).
#   symmetric    `masquerade fully-random`: a new random port per 5-tuple (address-and-port-
#                dependent mapping): a STUN-learnt address is useless to anyone else.
#   udp-blocked  `masquerade`, and no UDP leaves the home (only TCP and ICMP).
#
# Homes are numbered in the order given (1, 2, …). There is no route between homes except
# through their NATs and the segment: routers know only their two subnets, the segment knows
# none of the homes'.
#
# `up` prints KEY=VALUE lines: INET_NS, INET_ADDR, INET_ADDR_2, and per home HOME_NS_<name>, HOME_ADDR_<name>,
# ROUTER_NS_<name>, WAN_ADDR_<name>, KIND_<name>. On any failure it tears down what it made.
set -euo pipefail

INET_ADDR=198.51.100.2
INET_ADDR_2=198.51.100.3
SEGMENT=198.51.100.0/24

die() {
  echo "netlab: $*" >&2
  exit 1
}

check() {
  local missing=()
  command -v ip >/dev/null 2>&1 || missing+=("ip (apt-get install iproute2)")
  command -v nft >/dev/null 2>&1 || missing+=("nft (apt-get install nftables)")
  if ((${#missing[@]})); then
    echo "netlab: missing: ${missing[*]}" >&2
    return 1
  fi
  if [[ $(id -u) != 0 ]]; then
    echo "netlab: needs root (network namespaces and nftables)" >&2
    return 1
  fi
}

# The namespaces of a lab: PREFIX-inet, PREFIX-r*, PREFIX-h*.
lab_namespaces() {
  local prefix=$1
  ip netns list 2>/dev/null | awk '{print $1}' | while read -r ns; do
    case $ns in
      "$prefix-inet" | "$prefix"-r[0-9]* | "$prefix"-h[0-9]*) echo "$ns" ;;
    esac
  done
}

down() {
  local prefix=$1 ns pids
  for ns in $(lab_namespaces "$prefix"); do
    # Whatever a test left running inside (a hub, coturn, a peer): those processes are the
    # lab's own, started in its namespaces. Killed by PID, then the namespace goes.
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [[ -n $pids ]]; then
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
    fi
  done
  for ns in $(lab_namespaces "$prefix"); do
    ip netns delete "$ns" 2>/dev/null || true
  done
}

nat_rules() {
  local kind=$1 masq
  case $kind in
    cone | udp-blocked) masq="masquerade" ;;
    symmetric) masq="masquerade fully-random" ;;
    *) die "unknown NAT kind '$kind' (cone, symmetric, udp-blocked)" ;;
  esac
  local udp_rule=""
  if [[ $kind == udp-blocked ]]; then
    udp_rule='iifname "lan" meta l4proto udp drop'
  fi
  cat <<EOF
table ip nat {
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" $masq
  }
}
table ip filter {
  chain forward {
    type filter hook forward priority filter; policy drop;
    $udp_rule
    ct state established,related accept
    iifname "lan" oifname "wan" accept
  }
  chain input {
    type filter hook input priority filter; policy drop;
    iifname "lo" accept
    iifname "lan" accept
    ct state established,related accept
  }
}
EOF
}

up() {
  local prefix=$1
  shift
  (($#)) || die "usage: netlab.sh up PREFIX HOME:KIND [HOME:KIND …]"
  check || exit 1
  # A lab left over under this prefix (a crashed run) is replaced.
  down "$prefix"
  trap 'down "$prefix"' ERR

  local inet="$prefix-inet"
  ip netns add "$inet"
  ip -n "$inet" link set lo up
  ip -n "$inet" link add seg type bridge
  ip -n "$inet" link set seg up
  ip -n "$inet" addr add "$INET_ADDR/24" dev seg
  ip -n "$inet" addr add "$INET_ADDR_2/24" dev seg
  # A default route into a dead end: a gateway 198.51.100.1 that exists only as a permanent
  # neighbour entry with a MAC nobody has, so what is sent there leaves without an error and is
  # dropped by every router (not their MAC). A `blackhole` route would not do: a send to it fails
  # with EINVAL, and coturn drops the allocation on a failed relay send as on ENETUNREACH.
  ip -n "$inet" neigh add 198.51.100.1 lladdr 02:00:00:00:00:01 dev seg nud permanent
  ip -n "$inet" route add default via 198.51.100.1 dev seg
  # Frames bridged between routers must not meet an iptables/nftables forward hook here, should
  # br_netfilter be loaded (its switch is per namespace; absent when the module is not loaded).
  ip netns exec "$inet" sysctl -q -w net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true
  echo "INET_NS=$inet"
  echo "INET_ADDR=$INET_ADDR"
  echo "INET_ADDR_2=$INET_ADDR_2"

  local n=0 spec name kind router home
  for spec in "$@"; do
    n=$((n + 1))
    name=${spec%%:*}
    kind=${spec#*:}
    [[ $name =~ ^[A-Za-z0-9_]+$ && $spec == *:* ]] || die "bad home '$spec' (want NAME:KIND)"
    ((n <= 200)) || die "at most 200 homes"
    nat_rules "$kind" >/dev/null
    router="$prefix-r$n"
    home="$prefix-h$n"
    ip netns add "$router"
    ip netns add "$home"
    ip -n "$router" link set lo up
    ip -n "$home" link set lo up
    # Made directly inside the namespaces, so no name ever appears among the host's links.
    ip -n "$router" link add wan type veth peer name "r$n" netns "$inet"
    ip -n "$inet" link set "r$n" master seg up
    ip -n "$router" link add lan type veth peer name eth0 netns "$home"
    ip -n "$router" addr add "198.51.100.$((10 + n))/24" dev wan
    ip -n "$router" addr add "10.$n.0.1/24" dev lan
    ip -n "$router" link set wan up
    ip -n "$router" link set lan up
    ip -n "$home" addr add "10.$n.0.2/24" dev eth0
    ip -n "$home" link set eth0 up
    ip -n "$home" route add default via "10.$n.0.1"
    ip netns exec "$router" sysctl -q -w net.ipv4.ip_forward=1
    nat_rules "$kind" | ip netns exec "$router" nft -f -
    echo "HOME_NS_$name=$home"
    echo "HOME_ADDR_$name=10.$n.0.2"
    echo "ROUTER_NS_$name=$router"
    echo "WAN_ADDR_$name=198.51.100.$((10 + n))"
    echo "KIND_$name=$kind"
  done
  trap - ERR
  echo "SEGMENT=$SEGMENT"
}

case ${1:-} in
  up)
    [[ -n ${2:-} ]] || die "usage: netlab.sh up PREFIX HOME:KIND [HOME:KIND …]"
    up "${@:2}"
    ;;
  down)
    [[ -n ${2:-} ]] || die "usage: netlab.sh down PREFIX"
    down "$2"
    ;;
  check) check ;;
  *) die "usage: netlab.sh up PREFIX HOME:KIND […] | down PREFIX | check" ;;
esac
