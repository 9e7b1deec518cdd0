#!/usr/bin/env bash
# The mesh's numbers for BENCHMARKS.md (run as root; release binaries:
# `cd mesh && cargo build --release --bins` first). Three network
# namespaces on a bridge: replicas on hosts 0 and 1, the client on host 2.
# Prints, 64-byte payloads, one call at a time (p50 µs, p99 µs, calls/s):
#   mesh call (connect(name).mesh), direct TLS call (.at(addr)), the two
#   again from 4 threads (throughput), zenoh query/reply, the mesh call
#   with one replica live; then the time a caller's calls stop reaching the service
#   after SIGKILL and after SIGSTOP of the replica it was using.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/target/release
tag=mbz$$
dir=$(mktemp -d /tmp/mb-mesh-bench-XXXX)
chmod 700 "$dir"
net=10.199.$(( $$ % 250 ))
main=$BASHPID
cleanup() {
  # Subshells ($(..), pipelines) may run the EXIT trap too: only the script's own cleans up.
  [[ $BASHPID == "$main" ]] || return 0
  pkill -CONT -f "$dir" 2>/dev/null || true
  pkill -KILL -f "$dir" 2>/dev/null || true
  for i in 0 1 2; do ip netns del "$tag-$i" 2>/dev/null || true; done
  ip link del "${tag}b" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
ip link add name "${tag}b" type bridge && ip link set "${tag}b" up
for i in 0 1 2; do
  ip netns add "$tag-$i"
  ip link add "${tag}h$i" type veth peer name "${tag}p$i"
  ip link set "${tag}p$i" netns "$tag-$i"
  ip link set "${tag}h$i" master "${tag}b" up
  ip -n "$tag-$i" addr add "$net.$((i+2))/24" dev "${tag}p$i"
  ip -n "$tag-$i" link set "${tag}p$i" up
  ip -n "$tag-$i" link set lo up
  mkdir -m 700 "$dir/home$i"
done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=bench-ca -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
for i in 0 1; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$net.$((i+2))" \
    -keyout "$dir/r$i.key" -out "$dir/r$i.csr" 2>/dev/null
  openssl x509 -req -in "$dir/r$i.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -days 1 \
    -extfile <(echo "subjectAltName=IP:$net.$((i+2))") -out "$dir/r$i.pem" 2>/dev/null
  chmod 600 "$dir/r$i.key"
done
seeds="tcp/$net.2:7447,tcp/$net.3:7447"
replica() { # host; its pid in $started
  METABRIDGE_HOME=$dir/home$1 ip netns exec "$tag-$1" "$bin/mb-mesh-replica" ledger "$net.$(($1+2))" \
    "listen=tcp/$net.$(($1+2)):7447,$seeds,lease=${LEASE:-2000}" "$dir/r$1.pem" "$dir/r$1.key" bench-token \
    "$dir/ledger$1" > "$dir/replica$1.log" 2>&1 &
  started=$!
}
replica 0; r0=$started
replica 1; r1=$started
sleep 2
caller() { # mode [env...]
  local mode=$1; shift
  env "$@" METABRIDGE_HOME=$dir/home2 MB_WAIT_REPLICAS=1 ip netns exec "$tag-2" "$bin/mb-mesh-caller" ledger \
    "listen=tcp/$net.4:7448,$seeds,lease=${LEASE:-2000}" "$dir/ca.pem" bench-token "b$RANDOM" "$mode"
}
addr0=$(ip netns exec "$tag-0" ss -ltnp | awk -v p="pid=$r0," '$0 ~ p && $4 !~ /7447/ {print $4; exit}')
echo "host: $(lscpu | sed -n 's/^Model name: *//p')"
echo "64-byte echo, one at a time        p50_us p99_us calls/s"
for run in 1 2 3; do
  echo "mesh call (TLS, chosen by name)    $(caller bench | tail -1)"
  echo "direct TLS call (.at $addr0)  $(caller bench MB_DIRECT=$addr0 | tail -1)"
done
echo "the same, 4 calling threads (throughput)"
for run in 1 2 3; do
  echo "mesh call, 4 threads               $(caller bench MB_BENCH_THREADS=4 | tail -1)"
  echo "direct TLS call, 4 threads         $(caller bench MB_BENCH_THREADS=4 MB_DIRECT=$addr0 | tail -1)"
done
ip netns exec "$tag-0" "$bin/mb-mesh-zbench" serve "tcp/$net.2:7450" > /dev/null 2>&1 &
zserver=$!
sleep 1
for run in 1 2 3; do
  echo "zenoh query/reply                  $(ip netns exec "$tag-2" "$bin/mb-mesh-zbench" call "tcp/$net.2:7450" 20000)"
done
kill "$zserver"
# The same mesh call with one replica live (the other stopped for the
# moment): the mesh client's own cost beside the direct call.
kill -STOP "$r1"; sleep 3
for run in 1 2 3; do
  echo "mesh call, one replica live        $(caller bench | tail -1)"
  echo "direct TLS call (.at $addr0)  $(caller bench MB_DIRECT=$addr0 | tail -1)"
done
kill -CONT "$r1"; sleep 3
# Failover: one calling thread, its calls taken in turn by the two
# replicas. After the replica it was using is signalled, the longest gap
# between two answers is how long its calls stopped being answered.
failover() { # signal seconds
  local out=$dir/failover-$1
  exec 3> >(caller 1 MB_STAMP=1 > "$out")
  sleep 3
  victim=$(awk '$2=="ok"{print $4}' "$out" | tail -1)
  local t0; t0=$(date +%s.%N)
  kill "-$1" "$victim"
  sleep "$2"
  exec 3>&-
  sleep 1
  awk -v t0="$t0" 'BEGIN{prev=t0; gap=0} $1>t0 && $2=="ok" {if ($1-prev>gap) gap=$1-prev; prev=$1; n++}
    END{printf "failover after SIG%s: longest wait for an answer %.0f ms (%d answers in the next %s s)\n", sig, gap*1000, n, secs}' \
    sig="$1" secs="$2" "$out"
  awk -v t0="$t0" '$1>t0 && $2=="err"' "$out" | cut -d' ' -f4 | sort | uniq -c | sed 's/^/  errors: /'
  kill -CONT "$victim" 2>/dev/null || true
}
failover KILL 3
# The killed replica's host starts a new one.
if [[ $victim == "$r0" ]]; then replica 0; r0=$started; else replica 1; r1=$started; fi
sleep 3
failover STOP 8
