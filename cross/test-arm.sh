#!/bin/sh
# Runs the cross-built rtds and rtds-sim for TARGET under qemu-user, lets
# RTDS poll the simulator on loopback, a Modbus RTU device on a pty line
# (pymodbus's serial server behind socat), and, when the build has OPC UA,
# the asyncua test server, for a few cycles, stops it with SIGTERM, and checks
# the rows it wrote. Prints binary sizes and resident
# memory. Usage: cross/test-arm.sh TARGET QEMU SYSROOT [FEATURES]
set -eu
target=$1 qemu=$2 sysroot=$3 features=${4:-}
bin=target/$target/release
command -v "$qemu" >/dev/null || { echo "test-arm: $qemu not found (apt-get install qemu-user)" >&2; exit 1; }
[ -x "$bin/rtds" ] || { echo "test-arm: $bin/rtds missing (make cross-…)" >&2; exit 1; }

dir=$(mktemp -d)
sim_pid="" rtds_pid="" ua_pid="" sua_pid="" socat_pid="" rtu_pid=""
cleanup() {
    [ -n "$rtu_pid" ] && kill -KILL "$rtu_pid" 2>/dev/null
    [ -n "$socat_pid" ] && kill -KILL "$socat_pid" 2>/dev/null
    [ -n "$rtds_pid" ] && kill -KILL "$rtds_pid" 2>/dev/null
    [ -n "$sim_pid" ] && kill -KILL "$sim_pid" 2>/dev/null
    [ -n "$ua_pid" ] && kill -KILL "$ua_pid" 2>/dev/null
    [ -n "$sua_pid" ] && kill -KILL "$sua_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

"$qemu" -L "$sysroot" "$bin/rtds-sim" --port 0 > "$dir/sim.out" 2>&1 &
sim_pid=$!
i=0
until grep -q listening "$dir/sim.out" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 100 ] || { cat "$dir/sim.out" >&2; exit 1; }
    sleep 0.1
done
port=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$dir/sim.out")

# Modbus RTU: a serial line without hardware, pymodbus's RTU server (units 1
# and 2, tests/peers/rtu_peer.py) on one end, the ARM binary on the other.
command -v socat >/dev/null || { echo "test-arm: socat not found (apt-get install socat)" >&2; exit 1; }
socat "pty,raw,echo=0,link=$dir/lineA" "pty,raw,echo=0,link=$dir/lineB" 2>/dev/null &
socat_pid=$!
i=0
until [ -e "$dir/lineA" ] && [ -e "$dir/lineB" ]; do
    i=$((i + 1)); [ $i -lt 100 ] || { echo "test-arm: socat made no ptys" >&2; exit 1; }
    sleep 0.1
done
.venv/bin/python tests/peers/rtu_peer.py --serial "$dir/lineB" --log "$dir/rtu.jsonl" > "$dir/rtu.out" 2>&1 &
rtu_pid=$!
i=0
until grep -q "rtu_peer ready" "$dir/rtu.out" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 300 ] || { cat "$dir/rtu.out" >&2; exit 1; }
    sleep 0.1
done

# OPC UA: the ARM binary reads the independent asyncua server (when built in).
ua_connector="" ua_want=""
case " $features " in *" opcua "*) with_ua=1 ;; *) with_ua="" ;; esac
if [ -n "$with_ua" ]; then
    uaport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    .venv/bin/python tests/peers/opcua_server.py "$uaport" > "$dir/ua.out" 2>&1 &
    ua_pid=$!
    i=0
    until grep -q listening "$dir/ua.out" 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 300 ] || { cat "$dir/ua.out" >&2; exit 1; }
        sleep 0.1
    done
    # A second server with Basic256Sha256 SignAndEncrypt and a login: the
    # ARM build's mbedtls encrypts, and values come by subscription.
    suaport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    .venv/bin/python tests/peers/opcua_server.py "$suaport" --secure "$dir/srv" --ramp > "$dir/sua.out" 2>&1 &
    sua_pid=$!
    i=0
    until grep -q listening "$dir/sua.out" 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 300 ] || { cat "$dir/sua.out" >&2; exit 1; }
        sleep 0.1
    done
    ua_connector="(
        name: \"sua\",
        connection: \"connector=OpcUa; endpoint=opc.tcp://127.0.0.1:$suaport/rtds/; security=SignAndEncrypt; trust_all=true; user=operator; password=s3cret; mode=subscribe; sampling_ms=100; publish_ms=200; timeout=10\",
        tags: [
            (name: \"SecTemp\", address: \"ns=2;s=Line1.Temp\"),
            (name: \"SecRamp\", address: \"ns=2;s=Line1.Ramp\"),
        ],
    ),
    (
        name: \"ua\",
        connection: \"connector=OpcUa; endpoint=opc.tcp://127.0.0.1:$uaport/rtds/; timeout=5\",
        interval_ms: 200,
        tags: [
            (name: \"UaTemp\", address: \"ns=2;s=Line1.Temp\"),
            (name: \"UaBig\", address: \"ns=2;s=Line1.Big\"),
        ],
    ),"
    ua_want=1
fi

cat > "$dir/ticks.rhai" <<'RHAI'
let t = server.get("Ticks");
t.value = if t.status == 0 { t.value + 1 } else { 1 };
t.status = 0;
server.set(t);
RHAI
cat > "$dir/rtds.ron" <<RON
(
    cycle_ms: 200,
    storage: (path: "rtds.db"),
    connectors: [(
        name: "plc1",
        connection: "connector=ModbusTcp; host=127.0.0.1; port=$port; timeout=2",
        interval_ms: 200,
        tags: [
            (name: "Pattern", address: "hr:200", type: "u16"),
            (name: "Real", address: "hr:206", type: "f32"),
            (name: "Big", address: "hr:202", type: "u32"),
            (name: "Inputs", address: "di:0", type: "bool", count: 8),
        ],
    ), (
        name: "meter",
        connection: "connector=ModbusRtu; device=$dir/lineA; baud=19200; parity=N; unit_id=2; timeout=1",
        interval_ms: 200,
        tags: [
            (name: "RtuI32", address: "hr:13", type: "i32"),
            (name: "RtuU64", address: "ir:6", type: "u64", order: "DCBA"),
            (name: "RtuF32", address: "hr:10", type: "f32", order: "CDAB"),
        ],
    ), $ua_connector],
    scripts: [(file: "ticks.rhai")],
)
RON

if [ -n "$with_ua" ]; then
    # RTDS's certificate (an RSA key made under emulation) before the run.
    "$qemu" -L "$sysroot" "$bin/rtds" cert -c "$dir/rtds.ron" sua
fi
"$qemu" -L "$sysroot" "$bin/rtds" run -c "$dir/rtds.ron" 2> "$dir/rtds.log" &
rtds_pid=$!
sleep 3
if [ -n "$with_ua" ]; then
    # The encrypted subscription's values, within 30 s.
    python3 - "$dir/rtds.db" <<'PY' || { cat "$dir/rtds.log" >&2; exit 1; }
import sqlite3, sys, time
end = time.time() + 30
while time.time() < end:
    try:
        db = sqlite3.connect(sys.argv[1])
        r = dict(db.execute("SELECT name, status FROM current WHERE name IN ('SecTemp', 'SecRamp')"))
        if r == {"SecTemp": 0, "SecRamp": 0}:
            sys.exit(0)
    except sqlite3.Error:
        pass
    time.sleep(0.2)
sys.exit("the SignAndEncrypt subscription gave no good values in 30 s")
PY
fi
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$rtds_pid/status")
kill -TERM "$rtds_pid"
wait "$rtds_pid" || { cat "$dir/rtds.log" >&2; echo "test-arm: $target: rtds exited with an error" >&2; exit 1; }
rtds_pid=""

python3 - "$dir/rtds.db" "$target" "$dir/outbox" "$ua_want" <<'PY'
import glob, os, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
cur = dict((n, (v, s)) for n, v, s in db.execute("SELECT name, value, status FROM current"))
want = {"Pattern": (4660, 0), "Real": (123.5, 0), "Big": (305419896, 0), "Inputs": ("[1,1,0,0,1,0,1,0]", 0),
        # rtu_peer.py's unit 2, packed there with struct: -123456, 0x0102030405060708, -7.25.
        "RtuI32": (-123456, 0), "RtuU64": (72623859790382856, 0), "RtuF32": (-7.25, 0)}
if sys.argv[4]:
    # asyncua's values (tests/peers/opcua_server.py).
    want.update({"UaTemp": (21.5, 0), "UaBig": ("18446744073709551615", 0), "SecTemp": (21.5, 0)})
for name, expected in want.items():
    assert cur.get(name) == expected, f"{sys.argv[2]}: {name} = {cur.get(name)}, expected {expected}"
# A clean stop publishes everything: the outbox holds every archived row.
ticks = []
for seg in sorted(glob.glob(os.path.join(sys.argv[3], "seg-*.sqlite"))):
    s = sqlite3.connect("file:" + seg + "?mode=ro&immutable=1", uri=True)
    assert s.execute("PRAGMA integrity_check").fetchone()[0] == "ok", seg
    ticks += [v for (v,) in s.execute("SELECT value FROM archive_named WHERE name = 'Ticks' ORDER BY id")]
assert len(ticks) >= 5 and ticks == list(range(1, len(ticks) + 1)), f"{sys.argv[2]}: ticks {ticks}"
assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
print(f"{sys.argv[2]}: values exact (Modbus TCP, Modbus RTU on a pty{', OPC UA' if sys.argv[4] else ''}), {len(ticks)} cycles archived gaplessly, integrity ok")
PY
printf '%s: stripped sizes rtds %s bytes, rtds-sim %s bytes; resident under %s %s kB (includes the emulator)\n' \
    "$target" "$(stat -c %s "$bin/rtds")" "$(stat -c %s "$bin/rtds-sim")" "$qemu" "$rss_kb"
