#!/usr/bin/env bash
# Side-by-side benchmark: etcd 3.4 (3 members), PostgreSQL 15 (a primary and two streaming
# standbys, synchronous_commit = on with ANY 1 of the two, WAL archived by pgBackRest with
# archive-async) and Keepsake (3 nodes, archiving to the S3-compatible test server), one system
# at a time, on loopback, data on the same disk, all driven by the same client code
# (`keepsake bench --target …`). Prints one table with the ratios.
#
# Usage: ops/bench/compare.sh [SECONDS_PER_RUN]   (default 10; warm-up 2 s per run)
# Environment: BENCH_DIR (scratch directory, default target/bench), BENCH_CLIENTS (default 64),
# BENCH_CONNECTIONS (default 8): the connections the many-client runs of the gRPC systems (etcd,
# Keepsake) share, as a gateway holding a channel per node does and as etcd's own benchmark does
# (--conns beside --clients); PostgreSQL runs one transaction per connection, so it gets one per
# client. For reference Keepsake's write run is repeated with one connection per client.
# Installs what is missing (etcd-server, postgresql-15, pgbackrest) from Debian's packages and
# builds `keepsake` in release mode (the first build takes minutes; it is not counted in the
# run). Everything it starts is stopped on exit, interrupt included.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SECS=${1:-10}
CLIENTS=${BENCH_CLIENTS:-64}
CONNS=${BENCH_CONNECTIONS:-8}
BENCH_DIR=${BENCH_DIR:-$ROOT/target/bench}
PGBIN=/usr/lib/postgresql/15/bin

# ---- install ---------------------------------------------------------------------------------
need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
[ -x "$PGBIN/postgres" ] || need+=(postgresql-15)
command -v pgbackrest >/dev/null 2>&1 || need+=(pgbackrest)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "compare: installing ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # Keep the packages' own services from starting: this script runs its own instances.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null || { $SUDO rm -f /usr/sbin/policy-rc.d; exit 1; }
  $SUDO rm -f /usr/sbin/policy-rc.d
fi
bash ops/setup.sh --with-bench-compare
echo "compare: building keepsake (release, with the etcd and PostgreSQL drivers)" >&2
cargo build --release --locked --features bench-compare --bin keepsake >&2
KEEPSAKE=$ROOT/target/release/keepsake

# ---- scratch space and cleanup ---------------------------------------------------------------
RUN=$BENCH_DIR/run-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN/results"
PIDS=()
PG_DIRS=()
cleanup() {
  set +e
  for d in "${PG_DIRS[@]}"; do
    [ -f "$d/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1
  done
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$RUN/etcd" "$RUN/pg" "$RUN/keepsake"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bench() { # NAME TARGET [ARGS…]: one run, its JSON kept under results/
  local name=$1; shift
  echo "compare: $name" >&2
  "$KEEPSAKE" bench --output json --duration "${SECS}s" --warmup 2s --users 1000 --items-per-user 10 \
    --fsync-dir "$RUN" "$@" > "$RUN/results/$name.json"
}
workloads() { # PREFIX [ARGS…]: the three workloads against one system
  local p=$1; shift
  local shared=()
  [ "$p" = postgres ] || shared=(--connections "$CONNS")
  bench "$p-write" "$@" --mix write --clients "$CLIENTS" "${shared[@]}"
  bench "$p-90-10" "$@" --mix 90/10 --clients "$CLIENTS" "${shared[@]}"
  bench "$p-write-1" "$@" --mix write --clients 1
}
wait_port() { # PORT: until something listens on 127.0.0.1:PORT (30 s)
  for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "compare: nothing listens on port $1" >&2; return 1
}

# ---- etcd: 3 members ---------------------------------------------------------------------------
mkdir -p "$RUN/etcd"
cluster=""
for i in 1 2 3; do cluster+="${cluster:+,}e$i=http://127.0.0.1:2${i}380"; done
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$RUN/etcd/e$i" \
    --listen-client-urls "http://127.0.0.1:2${i}379" --advertise-client-urls "http://127.0.0.1:2${i}379" \
    --listen-peer-urls "http://127.0.0.1:2${i}380" --initial-advertise-peer-urls "http://127.0.0.1:2${i}380" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token compare \
    --logger zap --log-level error > "$RUN/etcd/e$i.log" 2>&1 &
  PIDS+=($!)
done
for i in 1 2 3; do wait_port "2${i}379"; done
ETCD_PIDS=$(IFS=,; echo "${PIDS[*]}")
ETCD_ENDPOINTS=127.0.0.1:21379,127.0.0.1:22379,127.0.0.1:23379
workloads etcd --target etcd --endpoints "$ETCD_ENDPOINTS" --watch-pid "$ETCD_PIDS"
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()
rm -rf "$RUN/etcd"

# ---- PostgreSQL: primary + 2 synchronous standbys, pgBackRest archiving ------------------------
PG=$RUN/pg
mkdir -p "$PG/repo" "$PG/spool" "$PG/log" "$PG/lock"
chown -R postgres "$RUN"
chmod 755 "$BENCH_DIR" "$RUN" 2>/dev/null || true
cat > "$PG/pgbackrest.conf" <<EOF
[global]
repo1-path=$PG/repo
spool-path=$PG/spool
log-path=$PG/log
lock-path=$PG/lock
archive-async=y
process-max=2
log-level-console=warn
log-level-file=warn
compress-type=lz4

[compare]
pg1-path=$PG/p0
pg1-port=25432
pg1-socket-path=$PG
EOF
pgrun() { runuser -u postgres -- "$@"; }
pgrun "$PGBIN/initdb" -D "$PG/p0" -U postgres --auth=trust >/dev/null
cat >> "$PG/p0/postgresql.conf" <<EOF
port = 25432
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG'
max_connections = 200
shared_buffers = 512MB
wal_level = replica
max_wal_senders = 10
synchronous_commit = on
synchronous_standby_names = 'ANY 1 (s1, s2)'
archive_mode = on
archive_command = 'pgbackrest --config=$PG/pgbackrest.conf --stanza=compare archive-push %p'
EOF
echo "host replication all 127.0.0.1/32 trust" >> "$PG/p0/pg_hba.conf"
PG_DIRS+=("$PG/p0")
pgrun "$PGBIN/pg_ctl" -D "$PG/p0" -l "$PG/p0.log" -w start >/dev/null
pgrun pgbackrest --config="$PG/pgbackrest.conf" --stanza=compare stanza-create >/dev/null
for i in 1 2; do
  pgrun "$PGBIN/pg_basebackup" -h 127.0.0.1 -p 25432 -U postgres -D "$PG/s$i" -X stream -R >/dev/null
  cat >> "$PG/s$i/postgresql.conf" <<EOF
port = 2543$((i + 2))
archive_mode = off
EOF
  echo "primary_conninfo = 'host=127.0.0.1 port=25432 user=postgres application_name=s$i'" >> "$PG/s$i/postgresql.auto.conf"
  PG_DIRS+=("$PG/s$i")
  pgrun "$PGBIN/pg_ctl" -D "$PG/s$i" -l "$PG/s$i.log" -w start >/dev/null
done
pgrun pgbackrest --config="$PG/pgbackrest.conf" --stanza=compare check >/dev/null
sync_state=$(pgrun psql -h "$PG" -p 25432 -U postgres -Atc "select string_agg(application_name || '=' || sync_state, ' ' order by application_name) from pg_stat_replication")
echo "compare: postgres standbys: $sync_state" >&2
PG_PIDS=$(for d in "${PG_DIRS[@]}"; do head -1 "$d/postmaster.pid"; done | paste -sd,)
workloads postgres --target postgres --postgres "host=127.0.0.1 port=25432 user=postgres dbname=postgres" --watch-pid "$PG_PIDS"
archived=$(pgrun psql -h "$PG" -p 25432 -U postgres -Atc "select archived_count || ' WAL files archived, ' || failed_count || ' failed' from pg_stat_archiver")
echo "compare: postgres: $archived" >&2
for d in "${PG_DIRS[@]}"; do pgrun "$PGBIN/pg_ctl" -D "$d" -m fast stop >/dev/null || true; done
PG_DIRS=()
rm -rf "$PG"

# ---- Keepsake: 3 nodes archiving to the S3-compatible test server ------------------------------
mkdir -p "$RUN/keepsake"
MOTO=$ROOT/target/tools/moto/bin/moto_server
"$MOTO" -H 127.0.0.1 -p 29000 > "$RUN/keepsake/moto.log" 2>&1 &
PIDS+=($!)
MOTO_PID=$!
wait_port 29000
python3 - <<'EOF'
import urllib.request
urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:29000/compare", method="PUT")).read()
EOF
cat > "$RUN/keepsake/node.toml" <<EOF
[archive]
url = "s3://compare/keepsake"
endpoint = "http://127.0.0.1:29000"
region = "us-east-1"
access_key_id = "compare"
secret_access_key = "compare"
EOF
ks() { # NAME [ARGS…]: a fresh 3-node cluster per run
  local name=$1; shift
  bench "$name" --target keepsake --start-cluster --cluster-dir "$RUN/keepsake/$name" --cluster-port 27001 "$@"
}
# The S3 test server's CPU counts as Keepsake's, as pgBackRest's counts as PostgreSQL's.
S3_ARCHIVE=(--node-config "$RUN/keepsake/node.toml" --watch-pid "$MOTO_PID")
ks keepsake-write "${S3_ARCHIVE[@]}" --mix write --clients "$CLIENTS" --connections "$CONNS"
ks keepsake-90-10 "${S3_ARCHIVE[@]}" --mix 90/10 --clients "$CLIENTS" --connections "$CONNS"
ks keepsake-write-1 "${S3_ARCHIVE[@]}" --mix write --clients 1
# For reference: one connection per client, as PostgreSQL has…
ks keepsake-1conn-write "${S3_ARCHIVE[@]}" --mix write --clients "$CLIENTS"
# …and archiving to a directory on the same disk (as pgBackRest's repository is).
ks keepsake-local-write --mix write --clients "$CLIENTS" --connections "$CONNS"

# ---- the table ---------------------------------------------------------------------------------
python3 - "$RUN/results" <<'EOF'
import json, os, sys
d = sys.argv[1]
r = {f[:-5]: json.load(open(os.path.join(d, f))) for f in os.listdir(d) if f.endswith(".json")}
systems = ["etcd", "postgres", "keepsake", "keepsake-1conn", "keepsake-local"]
n = r.get("postgres-write", {}).get("clients", 64)
loads = [("write", f"write, {n} clients"), ("90-10", f"90/10, {n} clients"), ("write-1", "write, 1 client")]
ms = lambda us: f"{us / 1000:.2f}"
print(f"\n{'workload':<20} {'system':<14} {'conns':>5} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU s':>7} {'max RSS MiB':>11}")
for key, label in loads:
    for s in systems:
        x = r.get(f"{s}-{key}")
        if not x:
            continue
        cpu = sum(p["cpu_seconds"] for p in x["servers"])
        rss = max((p["peak_rss_bytes"] for p in x["servers"]), default=0) / 2**20
        print(f"{label:<20} {s:<14} {x.get('connections', x['clients']):>5} {x['ops_per_second']:>9.0f} {ms(x['latency']['p50_us']):>8} {ms(x['latency']['p99_us']):>8} "
              f"{sum(x['errors'].values()):>7} {cpu:>7.1f} {rss:>11.0f}")
print(f"\n{'ratio keepsake / …':<20} {'':<14} {'':>5} {'ops/s':>9} {'p50':>8} {'p99':>8}")
for key, label in loads:
    k = r.get(f"keepsake-{key}")
    for s in ["etcd", "postgres"]:
        x = r.get(f"{s}-{key}")
        if not (k and x):
            continue
        print(f"{label:<20} {s:<14} {'':>5} {k['ops_per_second'] / x['ops_per_second']:>9.2f} "
              f"{k['latency']['p50_us'] / x['latency']['p50_us']:>8.2f} {k['latency']['p99_us'] / x['latency']['p99_us']:>8.2f}")
print()
for name, where in [("keepsake-write", "S3 test server"), ("keepsake-1conn-write", "S3 test server, a connection per client"), ("keepsake-local-write", "local directory")]:
    a = (r.get(name) or {}).get("archive_lag")
    if a:
        print(f"keepsake archive lag, 64-client write run, archive in the {where}: "
              f"p50 {a['p50_seconds']:.3f} s, p99 {a['p99_seconds']:.3f} s, max {a['max_seconds']:.3f} s")
f = (r.get("keepsake-write-1") or {}).get("fsync_round")
if f:
    k1 = r["keepsake-write-1"]["latency"]["p50_us"]
    print(f"fsync round on this disk (4 KiB append + fdatasync): p50 {ms(f['p50_us'])} ms, p99 {ms(f['p99_us'])} ms; "
          f"keepsake 1-client write p50 = {k1 / f['p50_us']:.2f} × the fsync round")
EOF
echo "compare: results in $RUN/results" >&2
