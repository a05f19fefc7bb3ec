#!/usr/bin/env bash
# scripts/netns-demo.sh: lab-wide archiving on "two hosts" of one Linux machine.
#
# Two `e4sync run` workers, each in a network namespace of its own (and a hostname of its
# own), share one PostgreSQL database, one simulator and one archive folder that live in a
# third, "server" namespace. The workers reach the database and the simulator only over
# veth links; nothing here can reach any other network.
#
#   e4demo-h1 ("host1")          e4demo-srv (server)                    e4demo-h2 ("host2")
#   198.18.1.2 ---- veth ---- 198.18.1.1   PostgreSQL :5432   198.18.2.1 ---- veth ---- 198.18.2.2
#   relay 127.0.0.1:8080 ->      relays 198.18.{1,2}.1:8080 -> simulator 127.0.0.1:8080
#
# Addresses come from 198.18.0.0/15 (RFC 2544, set aside for network tests), exist only on
# the veth links this script creates, and no namespace has a default route, so no packet can
# leave them. The e4sync client speaks plain http only to a loopback address (the simulator
# has no TLS) and the simulator listens only on loopback; so each worker talks to
# 127.0.0.1:8080 in its own namespace, and small TCP relays carry the bytes over the veth
# link to the simulator's loopback port in the server namespace. PostgreSQL is reached
# directly over the links. The archive is one folder both namespaces see (network
# namespaces share the filesystem); between real hosts it would be an NFS mount.
#
# What it shows: the workers divide the accounts between them (each account served by one
# worker at a time, under a lease); `e4sync status --json` from a third place shows both
# workers and their leases; `kill -9` of one worker in the middle of a slow download hands
# its account to the other within about one lease plus one interval; the archive verifies.
#
# Usage (as root; needs iproute2, util-linux and the PostgreSQL server binaries):
#   scripts/netns-demo.sh [--accounts N] [--sessions N] [--keep]
# Environment: E4SYNC_PYTHON (default: the repo's .venv/bin/python, else python3), with
# e4sync[postgres] importable. --keep leaves the work folder (logs, archive) behind.
# Everything it creates (namespaces, processes, the database cluster) is removed on exit.
set -euo pipefail

ACCOUNTS=4
SESSIONS=3
KEEP=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --accounts) ACCOUNTS="$2"; shift 2 ;;
        --sessions) SESSIONS="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
        *) echo "netns-demo: unknown option $1" >&2; exit 2 ;;
    esac
done

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${E4SYNC_PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
fi
[[ $EUID -eq 0 ]] || { echo "netns-demo: run as root (ip netns needs it)" >&2; exit 1; }
command -v ip >/dev/null || { echo "netns-demo: install iproute2" >&2; exit 1; }
command -v unshare >/dev/null || { echo "netns-demo: install util-linux" >&2; exit 1; }
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
[[ -x "$PGBIN/initdb" ]] || { echo "netns-demo: install postgresql (server)" >&2; exit 1; }
id -u postgres >/dev/null 2>&1 || { echo "netns-demo: no 'postgres' user" >&2; exit 1; }
"$PY" -c 'import e4sync, psycopg' 2>/dev/null \
    || { echo "netns-demo: $PY cannot import e4sync and psycopg" >&2; exit 1; }

SRV=e4demo-srv
H1=e4demo-h1
H2=e4demo-h2
LEASE=6
INTERVAL=2
for ns in "$SRV" "$H1" "$H2"; do
    if ip netns list | grep -qw "$ns"; then
        echo "netns-demo: namespace $ns exists already (another run?); remove it first" >&2
        exit 1
    fi
done

WORK="$(mktemp -d /tmp/e4demo.XXXXXX)"
chmod 0711 "$WORK"  # the postgres user must reach its cluster folder inside
PIDS=()
CREATED_NS=()

cleanup() {
    local status=$?
    set +e
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    if [[ -f "$WORK/pg/data/postmaster.pid" ]]; then
        ip netns exec "$SRV" runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" \
            -m fast -w stop >/dev/null 2>&1
    fi
    for ns in "${CREATED_NS[@]}"; do
        ip netns del "$ns" 2>/dev/null
    done
    if [[ $KEEP -eq 1 ]]; then
        echo "netns-demo: work folder kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { printf '\n== [%3d s] %s\n' "$SECONDS" "$*"; }
in_ns() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }

# -- the helper: TCP relay, simulator admin calls, status summaries -----------------------
cat >"$WORK/helper.py" <<'PYEOF'
"""Helper for netns-demo.sh: relay, admin calls, waiting on and summarising the state."""
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

ADMIN = "http://127.0.0.1:8080/_admin/"


def relay(listen_host, listen_port, to_host, to_port):
    """Accept on listen_host:listen_port and copy bytes both ways to to_host:to_port."""
    server = socket.create_server((listen_host, int(listen_port)), reuse_port=False)

    def pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection((to_host, int(to_port)), timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            continue
        threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()


def admin(method, path, payload=None):
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(ADMIN + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read(), dict(r.headers)


def admin_json(method, path, payload=None):
    return json.loads(admin(method, path, payload)[0])


def status(config):
    out = subprocess.run([sys.executable, "-m", "e4sync", "status", "--json", "--config", config],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "relay":
        relay(*args)
    elif cmd == "wait-port":
        host, port, timeout = args[0], int(args[1]), float(args[2])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection((host, port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        sys.exit(f"nothing answers on {host}:{port}")
    elif cmd == "add-account":
        user, password, sessions = args
        print(admin_json("POST", "accounts",
                         {"user": user, "password": password, "sessions": int(sessions)}))
    elif cmd == "add-sessions":
        user, count, size = args
        admin_json("POST", "sessions", {"user": user, "count": int(count),
                                        "size_bytes": int(size)})
    elif cmd == "faults":
        admin_json("POST", "faults", json.loads(args[0]))
    elif cmd == "wait-verified":
        config, want, timeout = args[0], int(args[1]), float(args[2])
        began = time.monotonic()
        while True:
            got = sum(a["counts"]["verified"] for a in status(config)["accounts"])
            if got >= want:
                print(f"  {got} sessions verified after {time.monotonic() - began:.1f} s")
                return
            if time.monotonic() - began > timeout:
                sys.exit(f"only {got} of {want} sessions verified after {timeout:g} s")
            time.sleep(0.5)
    elif cmd == "wait-lease-part":
        # Print the worker id holding ACCOUNT's lease once a .part of it is growing.
        config, account, archive, timeout = args[0], args[1], args[2], float(args[3])
        import pathlib

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            owner = {a["name"]: a["lease"]["owner"] for a in status(config)["accounts"]}.get(
                account)
            parts = [p for p in pathlib.Path(archive, account).rglob("*.part")
                     if p.stat().st_size > 0]
            if owner and parts:
                print(owner)
                return
            time.sleep(0.2)
        sys.exit(f"no download of {account} under way after {timeout:g} s")
    elif cmd == "wait-takeover":
        config, account, dead, timeout = args[0], args[1], args[2], float(args[3])
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            owner = {a["name"]: a["lease"]["owner"] for a in status(config)["accounts"]}.get(
                account)
            if owner and owner != dead:
                print(f"  {account} taken over by {owner} {time.monotonic() - began:.1f} s "
                      "after the kill")
                return
            time.sleep(0.2)
        sys.exit(f"nobody took {account} over within {timeout:g} s")
    elif cmd == "summary":
        data = status(args[0])
        for a in data["accounts"]:
            c = a["counts"]
            last = a["last_pass"] or {}
            print(f"  account {a['name']:<8} verified {c['verified']:>2}  healthy "
                  f"{str(a['healthy']):<5} last pass by {last.get('worker', '-')}  "
                  f"lease {a['lease']['owner'] or '-'}")
        for w in data["workers"]:
            print(f"  worker {w['id']:<28} host {w['host']:<6} heartbeat {w['heartbeat']} "
                  f"stale {w['stale']} now: {w['current'] or 'idle'}")
    elif cmd == "passes":
        # Which worker served which account, from the passes table.
        import sqlalchemy as sa

        engine = sa.create_engine(args[0])
        with engine.connect() as c:
            rows = c.execute(sa.text(
                "SELECT a.name, p.worker, count(*), sum(p.downloaded) FROM passes p "
                "JOIN accounts a ON a.id = p.account_id GROUP BY a.name, p.worker "
                "ORDER BY a.name, p.worker")).all()
        for name, worker, n, downloaded in rows:
            print(f"  {name:<8} served by {worker:<28} {n:>3} passes, "
                  f"{downloaded:>2} sessions downloaded")
    elif cmd == "check-archive":
        # Every session the simulator lists is archived, its sha256 equal to the served ZIP's.
        import pathlib

        archive, users = pathlib.Path(args[0]), args[1:]
        sidecars = {}
        for side in archive.rglob("*.json"):
            data = json.loads(side.read_text())
            sidecars[data["session_id"]] = data
        total = bad = 0
        for user in users:
            for row in admin_json("GET", f"sessions?user={user}"):
                total += 1
                _, headers = admin("GET", f"zip/{row['id']}")
                side = sidecars.get(row["id"])
                if side is None or side["sha256"] != headers.get("X-SHA256"):
                    bad += 1
                    print(f"  session {row['id']} of {user}: missing or different")
        print(f"  {total - bad} of {total} sessions archived, each sha256 equal to the "
              f"simulator's ZIP")
        sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
PYEOF
helper() { "$PY" "$WORK/helper.py" "$@"; }

# -- namespaces and links -------------------------------------------------------------------
say "namespaces $SRV, $H1, $H2 and their veth links (198.18.0.0/15 only)"
for ns in "$SRV" "$H1" "$H2"; do
    ip netns add "$ns"
    CREATED_NS+=("$ns")
    in_ns "$ns" ip link set lo up
done
link() {  # link <n> <host ns>: veth pair e4d-s<n> (server side) <-> e4d-h<n> (host side)
    local n="$1" ns="$2"
    ip link add "e4d-s$n" netns "$SRV" type veth peer name "e4d-h$n" netns "$ns"
    in_ns "$SRV" ip addr add "198.18.$n.1/24" dev "e4d-s$n"
    in_ns "$ns" ip addr add "198.18.$n.2/24" dev "e4d-h$n"
    in_ns "$SRV" ip link set "e4d-s$n" up
    in_ns "$ns" ip link set "e4d-h$n" up
}
link 1 "$H1"
link 2 "$H2"
for ns in "$SRV" "$H1" "$H2"; do
    echo "  $ns: $(in_ns "$ns" ip -brief -4 addr | awk '{printf "%s %s; ", $1, $3}')" \
        "routes: $(in_ns "$ns" ip -4 route | wc -l) (none default)"
done
in_ns "$H1" ip -4 route | grep -q default && { echo "unexpected default route" >&2; exit 1; }

# -- PostgreSQL in the server namespace -------------------------------------------------------
say "PostgreSQL in $SRV, listening on 198.18.1.1 and 198.18.2.1"
mkdir -p "$WORK/pg"
chown postgres: "$WORK/pg"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg/data" -U postgres -A trust --no-sync \
    >"$WORK/pg/initdb.log"
echo "host all all 198.18.0.0/15 trust" >>"$WORK/pg/data/pg_hba.conf"
in_ns "$SRV" runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/server.log" \
    -o "-c listen_addresses=127.0.0.1,198.18.1.1,198.18.2.1 -p 5432 -k $WORK/pg -c fsync=off" \
    -w start >/dev/null
in_ns "$SRV" runuser -u postgres -- "$PGBIN/createdb" -h 127.0.0.1 -p 5432 -U postgres e4sync
echo "  database e4sync ready"

# -- the simulator, and relays that carry its port over the links ---------------------------
say "simulator on 127.0.0.1:8080 in $SRV, relayed to 127.0.0.1:8080 in $H1 and $H2"
# Background jobs are started with `ip netns exec` itself (not a shell function), so that $!
# is the program's own pid: ip, unshare and sh -c "exec" all replace themselves.
ip netns exec "$SRV" "$PY" -m e4sync simulate --port 8080 --sessions 0 --bandwidth 1000000 \
    >"$WORK/simulator.log" 2>&1 &
PIDS+=($!)
in_ns "$SRV" "$PY" "$WORK/helper.py" wait-port 127.0.0.1 8080 30
for n in 1 2; do
    ip netns exec "$SRV" "$PY" "$WORK/helper.py" relay "198.18.$n.1" 8080 127.0.0.1 8080 &
    PIDS+=($!)
done
ip netns exec "$H1" "$PY" "$WORK/helper.py" relay 127.0.0.1 8080 198.18.1.1 8080 &
PIDS+=($!)
ip netns exec "$H2" "$PY" "$WORK/helper.py" relay 127.0.0.1 8080 198.18.2.1 8080 &
PIDS+=($!)
in_ns "$H1" "$PY" "$WORK/helper.py" wait-port 127.0.0.1 8080 10
in_ns "$H2" "$PY" "$WORK/helper.py" wait-port 127.0.0.1 8080 10

mkdir -m 0700 "$WORK/secrets"
USERS=()
for i in $(seq 1 "$ACCOUNTS"); do
    user="lab$i@example.org"
    password="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    (umask 077 && printf '%s\n' "$password" >"$WORK/secrets/lab$i.password")
    in_ns "$SRV" "$PY" "$WORK/helper.py" add-account "$user" "$password" "$SESSIONS" >/dev/null
    USERS+=("$user")
done
echo "  $ACCOUNTS accounts with $SESSIONS sessions each"

# -- one configuration per host: the same accounts, archive and database --------------------
write_config() {  # write_config <host> <address of the server on that host's link>
    local host="$1" server="$2"
    local cfg="$WORK/$host/config.toml"
    mkdir -p "$WORK/$host"
    {
        printf '[archive]\nroot = "%s"\n\n' "$WORK/archive"
        printf '[state]\nurl = "postgresql+psycopg://postgres@%s:5432/e4sync"\n' "$server"
        printf 'dir = "%s"\nlease = "%ss"\n\n' "$WORK/$host/state" "$LEASE"
        printf '[schedule]\ninterval = "%ss"\njitter = "0s"\n\n' "$INTERVAL"
        printf '[download]\nbackoff = "0s"\n\n'
        for i in $(seq 1 "$ACCOUNTS"); do
            printf '[[account]]\nname = "lab%s"\nusername = "lab%s@example.org"\n' "$i" "$i"
            printf 'password_file = "%s"\n' "$WORK/secrets/lab$i.password"
            printf 'base_url = "http://127.0.0.1:8080/connect"\n\n'
        done
    } >"$cfg"
    echo "$cfg"
}
CFG1="$(write_config host1 198.18.1.1)"
CFG2="$(write_config host2 198.18.2.1)"
# The "observer" reads status from the server namespace, where PostgreSQL is on loopback.
CFGS="$(write_config observer 127.0.0.1)"

LAST_PID=""
start_worker() {  # start_worker <ns> <hostname> <config>: sets LAST_PID to the worker's pid
    local ns="$1" name="$2" cfg="$3"
    # Each gets its own UTS namespace too, so `status` shows host1/host2 as the host.
    ip netns exec "$ns" unshare --uts \
        sh -c 'hostname "$1" && exec "$2" -m e4sync run --config "$3"' \
        sh "$name" "$PY" "$cfg" >"$WORK/$name/worker.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

say "phase 1: two workers archive ${ACCOUNTS}x${SESSIONS} sessions"
start_worker "$H1" host1 "$CFG1"
W1="$LAST_PID"
start_worker "$H2" host2 "$CFG2"
W2="$LAST_PID"
in_ns "$SRV" "$PY" "$WORK/helper.py" wait-verified "$CFGS" $((ACCOUNTS * SESSIONS)) 120
in_ns "$SRV" "$PY" "$WORK/helper.py" summary "$CFGS"
echo "  who served what (passes table):"
in_ns "$SRV" "$PY" "$WORK/helper.py" passes "postgresql+psycopg://postgres@127.0.0.1:5432/e4sync"

say "phase 2: kill -9 the worker that is downloading a slow session"
# Two big sessions for lab1 behind a 300 KB/s cap: several seconds each.
in_ns "$SRV" "$PY" "$WORK/helper.py" faults '{"bandwidth": 300000}'
in_ns "$SRV" "$PY" "$WORK/helper.py" add-sessions lab1@example.org 2 2000000
VICTIM="$(in_ns "$SRV" "$PY" "$WORK/helper.py" wait-lease-part "$CFGS" lab1 "$WORK/archive" 60)"
VICTIM_PID="$(echo "$VICTIM" | cut -d: -f2)"
case "$VICTIM_PID" in
    "$W1") VICTIM_HOST=host1; SURVIVOR_PID="$W2" ;;
    "$W2") VICTIM_HOST=host2; SURVIVOR_PID="$W1" ;;
    *) echo "netns-demo: lease owner $VICTIM is neither worker" >&2; exit 1 ;;
esac
echo "  lab1 is being downloaded by $VICTIM ($VICTIM_HOST); kill -9 $VICTIM_PID"
kill -9 "$VICTIM_PID"
{ wait "$VICTIM_PID"; } 2>/dev/null || true  # reap it quietly (bash would print "Killed")
in_ns "$SRV" "$PY" "$WORK/helper.py" wait-takeover "$CFGS" lab1 "$VICTIM" $((LEASE + INTERVAL + 20))
in_ns "$SRV" "$PY" "$WORK/helper.py" wait-verified "$CFGS" $((ACCOUNTS * SESSIONS + 2)) 120
in_ns "$SRV" "$PY" "$WORK/helper.py" summary "$CFGS"

say "phase 3: stop the survivor (SIGTERM) and check the archive"
kill -TERM "$SURVIVOR_PID"
code=0
wait "$SURVIVOR_PID" || code=$?
echo "  survivor exited with $code"
in_ns "$SRV" "$PY" -m e4sync verify --config "$CFGS" | sed 's/^/  /'
in_ns "$SRV" "$PY" "$WORK/helper.py" faults '{"bandwidth": 0}'  # the ZIPs are fetched to compare
in_ns "$SRV" "$PY" "$WORK/helper.py" check-archive "$WORK/archive" "${USERS[@]}"
echo "  files: $(find "$WORK/archive" -name '*.zip' | wc -l) zip, " \
    "$(find "$WORK/archive" -name '*.json' | wc -l) sidecars, " \
    "$(find "$WORK/archive" -name '*.part' | wc -l) partial"
say "done; cleaning up namespaces, processes and the database cluster"
