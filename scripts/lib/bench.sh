# Helpers shared by the bench scripts (sourced, not run).

# freeport [N] prints N (default 1) distinct free TCP ports on 127.0.0.1
# on one line. They come from the 10,000 ports below the kernel's ephemeral
# range: the kernel hands ports from that range to outgoing connections and
# port-0 binds, so one picked there could be taken before the server binds
# it, and two port-0 picks in a row can return the same port.
freeport() {
	python3 - "${1:-1}" <<'PY'
import random, socket, sys
try:
    first = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    first = 30000
lo = first - 10000 if first >= 11024 else 20000
candidates = list(range(lo, lo + 10000))
random.shuffle(candidates)
want, got = int(sys.argv[1]), []
for p in candidates:
    if len(got) == want:
        break
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        got.append(p)
    except OSError:
        pass
    finally:
        s.close()
if len(got) < want:
    sys.exit("freeport: no free port")
print(*got)
PY
}

# waitport waits up to 10 s for 127.0.0.1:PORT to accept connections.
waitport() {
	for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
	echo "port $1 never opened" >&2
	return 1
}

# layout LAYOUT PID... puts the servers PID... (every thread) on CPU 1 for
# the pinned layout, or on every CPU for the shared one, and sets on0 to
# the prefix that runs a client command on CPU 0 (empty when shared).
on0=
layout() {
	local lay=$1 cpus p
	shift
	case $lay in
	pinned) cpus=1; on0="taskset -c 0" ;;
	shared) cpus=0-$(($(nproc) - 1)); on0= ;;
	*) echo "$(basename "$0"): unknown layout $lay (shared, pinned)" >&2; exit 2 ;;
	esac
	for p in "$@"; do taskset -apc "$cpus" "$p" >/dev/null; done
}

# recache FILE rebuilds FILE's page cache the same way every time: its
# dirty pages written back (so no run pays for the writeback of the one
# before), every cached page dropped, the file read again in order. A run
# then starts from the same cache whatever ran before it (the folios a
# workload leaves behind change what the next one costs), and reads
# nothing from disk: this machine's page cache also erodes over minutes
# with nothing else running.
recache() {
	sync "$1"
	dd if="$1" iflag=nocache count=0 status=none
	cat "$1" >/dev/null
}

# bytesof turns a size like 512M or 2G into bytes.
bytesof() { python3 -c "s='$1'; m={'K':1<<10,'M':1<<20,'G':1<<30}; print(int(s[:-1])*m[s[-1]] if s[-1] in m else int(s))"; }

# fio_summary prints "IOPS MiB/s bytes p50 p99 cores" of the read side of
# a fio JSON result, or of its write side when it read nothing; p50 and p99
# are completion latencies in µs, cores the CPU fio itself used (user +
# system, in CPUs).
fio_summary() {
	python3 - "$1" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
side = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
pct = side.get("clat_ns", {}).get("percentile", {})
p50, p99 = pct.get("50.000000", 0) / 1000, pct.get("99.000000", 0) / 1000
cores = (j["usr_cpu"] + j["sys_cpu"]) / 100
print(f"{side['iops']:.0f} {side['bw_bytes']/1048576:.1f} {side['io_bytes']} {p50:.1f} {p99:.1f} {cores:.3f}")
PY
}

# cputicks PID prints the CPU time (user + system, in clock ticks:
# getconf CLK_TCK) process PID has used so far, every thread counted; 0
# for none.
cputicks() {
	local f
	[ -n "$1" ] && read -r -a f <"/proc/$1/stat" 2>/dev/null && { echo $((f[13] + f[14])); return; }
	echo 0
}
