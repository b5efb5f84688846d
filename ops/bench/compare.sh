#!/usr/bin/env bash
# Side-by-side benchmark: etcd 3.4 (3 members), PostgreSQL 15 (a primary and two streaming
# standbys, synchronous_commit = on with ANY 1 of the two, WAL archived by pgBackRest with
# archive-async) and Keepsake (3 nodes, archiving to the S3-compatible test server), one system
# at a time, on loopback, data on the same disk, all driven by the same client code
# (`keepsake bench --target …`). Prints one table with the ratios.
#
# Usage: ops/bench/compare.sh [SECONDS_PER_RUN]   (default 10; warm-up 2 s per run)
# Environment: BENCH_TLS: `off` (the default: every system in plaintext), `on` (every system
# over TLS: Keepsake's client and peer ports, etcd's client and peer URLs with client
# certificates, PostgreSQL's clients and streaming replication with ssl, all with one throwaway
# CA) or `both` (each system plaintext, then over TLS, and a table of what TLS costs each);
# BENCH_DIR (scratch directory, default target/bench), BENCH_CLIENTS (default 64),
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
case ${BENCH_TLS:-off} in
  off) MODES=(plain) ;;
  on) MODES=(tls) ;;
  both) MODES=(plain tls) ;;
  *) echo "compare: BENCH_TLS is off, on or both" >&2; exit 2 ;;
esac
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
  case $p in postgres*) ;; *) shared=(--connections "$CONNS") ;; esac
  bench "$p-write" "$@" --mix write --clients "$CLIENTS" "${shared[@]}"
  bench "$p-90-10" "$@" --mix 90/10 --clients "$CLIENTS" "${shared[@]}"
  bench "$p-write-1" "$@" --mix write --clients 1
}
wait_port() { # PORT: until something listens on 127.0.0.1:PORT (30 s)
  for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "compare: nothing listens on port $1" >&2; return 1
}

# ---- TLS: one throwaway CA; etcd and PostgreSQL present node 1's certificate (127.0.0.1) ------
CERTS=$RUN/certs
if [[ " ${MODES[*]} " == *" tls "* ]]; then
  mkdir -p "$CERTS"
  "$KEEPSAKE" cert create-ca --dir "$CERTS" --name "compare CA (throwaway)" >/dev/null
  "$KEEPSAKE" cert create-node --dir "$CERTS" --node-id 1 --host 127.0.0.1 --host localhost >/dev/null
  "$KEEPSAKE" cert create-client --dir "$CERTS" --name compare --role operator >/dev/null
fi
suffix() { if [ "$1" = tls ]; then echo -tls; fi; } # MODE: what its runs' names end with

# ---- etcd: 3 members ---------------------------------------------------------------------------
etcd_runs() { # MODE
  local mode=$1 scheme=http tls=() client_tls=() cluster="" i pids
  if [ "$mode" = tls ]; then
    scheme=https
    tls=(--cert-file "$CERTS/node-1.crt" --key-file "$CERTS/node-1.key" --client-cert-auth
      --trusted-ca-file "$CERTS/ca.crt" --peer-cert-file "$CERTS/node-1.crt" --peer-key-file "$CERTS/node-1.key"
      --peer-client-cert-auth --peer-trusted-ca-file "$CERTS/ca.crt")
    client_tls=(--ca "$CERTS/ca.crt" --cert "$CERTS/client-compare.crt" --key "$CERTS/client-compare.key")
  fi
  mkdir -p "$RUN/etcd"
  for i in 1 2 3; do cluster+="${cluster:+,}e$i=$scheme://127.0.0.1:2${i}380"; done
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$RUN/etcd/e$i" \
      --listen-client-urls "$scheme://127.0.0.1:2${i}379" --advertise-client-urls "$scheme://127.0.0.1:2${i}379" \
      --listen-peer-urls "$scheme://127.0.0.1:2${i}380" --initial-advertise-peer-urls "$scheme://127.0.0.1:2${i}380" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token compare \
      "${tls[@]}" --logger zap --log-level error > "$RUN/etcd/e$i.log" 2>&1 &
    PIDS+=($!)
  done
  for i in 1 2 3; do wait_port "2${i}379"; done
  pids=$(IFS=,; echo "${PIDS[*]}")
  workloads "etcd$(suffix "$mode")" --target etcd --endpoints 127.0.0.1:21379,127.0.0.1:22379,127.0.0.1:23379 \
    --watch-pid "$pids" "${client_tls[@]}"
  for i in "${PIDS[@]}"; do kill "$i" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
  rm -rf "$RUN/etcd"
}
for mode in "${MODES[@]}"; do etcd_runs "$mode"; done

# ---- PostgreSQL: primary + 2 synchronous standbys, pgBackRest archiving ------------------------
pgrun() { runuser -u postgres -- "$@"; }
postgres_runs() { # MODE
  local mode=$1 ssl="" client_tls=() i d pids sync_state archived
  PG=$RUN/pg
  mkdir -p "$PG/repo" "$PG/spool" "$PG/log" "$PG/lock"
  chown -R postgres "$RUN"
  chmod 755 "$BENCH_DIR" "$RUN" 2>/dev/null || true
  if [ "$mode" = tls ]; then
    # Clients and the standbys' streaming replication over TLS; no TCP connection without it.
    install -o postgres -m 600 "$CERTS/node-1.crt" "$PG/server.crt"
    install -o postgres -m 600 "$CERTS/node-1.key" "$PG/server.key"
    ssl=" sslmode=require"
    client_tls=(--ca "$CERTS/ca.crt")
  fi
  cat > "$PG/pgbackrest.conf" <<CONF
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
CONF
  pgrun "$PGBIN/initdb" -D "$PG/p0" -U postgres --auth=trust >/dev/null
  cat >> "$PG/p0/postgresql.conf" <<CONF
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
CONF
  if [ "$mode" = tls ]; then
    printf "ssl = on\nssl_cert_file = '%s'\nssl_key_file = '%s'\n" "$PG/server.crt" "$PG/server.key" >> "$PG/p0/postgresql.conf"
    { echo "hostnossl all all 0.0.0.0/0 reject"; echo "hostnossl replication all 0.0.0.0/0 reject"; cat "$PG/p0/pg_hba.conf"; } > "$PG/hba"
    install -o postgres -m 600 "$PG/hba" "$PG/p0/pg_hba.conf"
  fi
  echo "host replication all 127.0.0.1/32 trust" >> "$PG/p0/pg_hba.conf"
  PG_DIRS+=("$PG/p0")
  pgrun "$PGBIN/pg_ctl" -D "$PG/p0" -l "$PG/p0.log" -w start >/dev/null
  pgrun pgbackrest --config="$PG/pgbackrest.conf" --stanza=compare stanza-create >/dev/null
  for i in 1 2; do
    pgrun "$PGBIN/pg_basebackup" -d "host=127.0.0.1 port=25432 user=postgres$ssl" -D "$PG/s$i" -X stream -R >/dev/null
    printf "port = 2543%s\narchive_mode = off\n" "$((i + 2))" >> "$PG/s$i/postgresql.conf"
    echo "primary_conninfo = 'host=127.0.0.1 port=25432 user=postgres application_name=s$i$ssl'" >> "$PG/s$i/postgresql.auto.conf"
    PG_DIRS+=("$PG/s$i")
    pgrun "$PGBIN/pg_ctl" -D "$PG/s$i" -l "$PG/s$i.log" -w start >/dev/null
  done
  pgrun pgbackrest --config="$PG/pgbackrest.conf" --stanza=compare check >/dev/null
  sync_state=$(pgrun psql -h "$PG" -p 25432 -U postgres -Atc "select string_agg(r.application_name || '=' || r.sync_state || ' ssl=' || s.ssl, ' ' order by r.application_name) from pg_stat_replication r join pg_stat_ssl s using (pid)")
  echo "compare: postgres standbys: $sync_state" >&2
  pids=$(for d in "${PG_DIRS[@]}"; do head -1 "$d/postmaster.pid"; done | paste -sd,)
  workloads "postgres$(suffix "$mode")" --target postgres \
    --postgres "host=127.0.0.1 port=25432 user=postgres dbname=postgres$ssl" --watch-pid "$pids" "${client_tls[@]}"
  archived=$(pgrun psql -h "$PG" -p 25432 -U postgres -Atc "select archived_count || ' WAL files archived, ' || failed_count || ' failed' from pg_stat_archiver")
  echo "compare: postgres: $archived" >&2
  for d in "${PG_DIRS[@]}"; do pgrun "$PGBIN/pg_ctl" -D "$d" -m fast stop >/dev/null || true; done
  PG_DIRS=()
  rm -rf "$PG"
}
for mode in "${MODES[@]}"; do postgres_runs "$mode"; done

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
for mode in "${MODES[@]}"; do
  k=keepsake$(suffix "$mode")
  tls=()
  [ "$mode" = tls ] && tls=(--tls)
  ks "$k-write" "${S3_ARCHIVE[@]}" "${tls[@]}" --mix write --clients "$CLIENTS" --connections "$CONNS"
  ks "$k-90-10" "${S3_ARCHIVE[@]}" "${tls[@]}" --mix 90/10 --clients "$CLIENTS" --connections "$CONNS"
  ks "$k-write-1" "${S3_ARCHIVE[@]}" "${tls[@]}" --mix write --clients 1
  [ "${MODES[0]}" = "$mode" ] || continue
  # For reference: one connection per client, as PostgreSQL has…
  ks "$k-1conn-write" "${S3_ARCHIVE[@]}" "${tls[@]}" --mix write --clients "$CLIENTS"
  # …and archiving to a directory on the same disk (as pgBackRest's repository is).
  ks "$k-local-write" "${tls[@]}" --mix write --clients "$CLIENTS" --connections "$CONNS"
done

# ---- the table ---------------------------------------------------------------------------------
python3 - "$RUN/results" <<'EOF'
import json, os, sys
d = sys.argv[1]
r = {f[:-5]: json.load(open(os.path.join(d, f))) for f in os.listdir(d) if f.endswith(".json")}
suffixes = [s for s in ["", "-tls"] if f"keepsake{s}-write" in r or f"etcd{s}-write" in r]
systems = [f"{b}{s}" for s in suffixes for b in ["etcd", "postgres", "keepsake"]]
systems += [f"keepsake{suffixes[0]}-1conn", f"keepsake{suffixes[0]}-local"] if suffixes else []
n = next((x["clients"] for k, x in r.items() if k.endswith("-write") and "-1conn" not in k), 64)
loads = [("write", f"write, {n} clients"), ("90-10", f"90/10, {n} clients"), ("write-1", "write, 1 client")]
ms = lambda us: f"{us / 1000:.2f}"
cpu = lambda x: sum(p["cpu_seconds"] for p in x["servers"])
print(f"\n{'workload':<20} {'system':<18} {'conns':>5} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU s':>7} {'max RSS MiB':>11}")
for key, label in loads:
    for s in systems:
        x = r.get(f"{s}-{key}")
        if not x:
            continue
        rss = max((p["peak_rss_bytes"] for p in x["servers"]), default=0) / 2**20
        print(f"{label:<20} {s:<18} {x.get('connections', x['clients']):>5} {x['ops_per_second']:>9.0f} {ms(x['latency']['p50_us']):>8} {ms(x['latency']['p99_us']):>8} "
              f"{sum(x['errors'].values()):>7} {cpu(x):>7.1f} {rss:>11.0f}")
for s in suffixes:
    print(f"\n{'ratio keepsake' + s + ' / …':<20} {'':<18} {'':>5} {'ops/s':>9} {'p50':>8} {'p99':>8}")
    for key, label in loads:
        k = r.get(f"keepsake{s}-{key}")
        for other in ["etcd", "postgres"]:
            x = r.get(f"{other}{s}-{key}")
            if not (k and x):
                continue
            print(f"{label:<20} {other + s:<18} {'':>5} {k['ops_per_second'] / x['ops_per_second']:>9.2f} "
                  f"{k['latency']['p50_us'] / x['latency']['p50_us']:>8.2f} {k['latency']['p99_us'] / x['latency']['p99_us']:>8.2f}")
if suffixes == ["", "-tls"]:
    print(f"\n{'TLS / plaintext':<20} {'system':<18} {'':>5} {'ops/s':>9} {'p50':>8} {'p99':>8} {'CPU/op':>7}")
    for key, label in loads:
        for b in ["etcd", "postgres", "keepsake"]:
            p, t = r.get(f"{b}-{key}"), r.get(f"{b}-tls-{key}")
            if not (p and t):
                continue
            per_op = lambda x: cpu(x) / max(x["ops"], 1)
            print(f"{label:<20} {b:<18} {'':>5} {t['ops_per_second'] / p['ops_per_second']:>9.2f} "
                  f"{t['latency']['p50_us'] / p['latency']['p50_us']:>8.2f} {t['latency']['p99_us'] / p['latency']['p99_us']:>8.2f} "
                  f"{per_op(t) / per_op(p):>7.2f}")
print()
base = suffixes[0] if suffixes else ""
for name, where in [(f"keepsake{base}-write", "S3 test server"), (f"keepsake{base}-1conn-write", "S3 test server, a connection per client"), (f"keepsake{base}-local-write", "local directory")]:
    a = (r.get(name) or {}).get("archive_lag")
    if a:
        print(f"{name} archive lag, archive in the {where}: "
              f"p50 {a['p50_seconds']:.3f} s, p99 {a['p99_seconds']:.3f} s, max {a['max_seconds']:.3f} s")
f = (r.get(f"keepsake{base}-write-1") or {}).get("fsync_round")
if f:
    k1 = r[f"keepsake{base}-write-1"]["latency"]["p50_us"]
    print(f"fsync round on this disk (4 KiB append + fdatasync): p50 {ms(f['p50_us'])} ms, p99 {ms(f['p99_us'])} ms; "
          f"keepsake 1-client write p50 = {k1 / f['p50_us']:.2f} × the fsync round")
EOF
echo "compare: results in $RUN/results" >&2
