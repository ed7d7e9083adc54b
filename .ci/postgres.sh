# Start a throw-away PostgreSQL server on 127.0.0.1 (a free port) and export PENGI_TEST_POSTGRES_URL for the
# store tests. Sourced by .ci/run.
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pg_dir=$(mktemp -d /tmp/pengi-pg.XXXXXX)
pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
chown postgres "$pg_dir"
su postgres -c "$pg_bin/initdb -D $pg_dir/data -A trust -U postgres" >/dev/null
su postgres -c "$pg_bin/pg_ctl -D $pg_dir/data -o '-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_dir' -l $pg_dir/log -w start" >/dev/null
export PENGI_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$pg_port/postgres"
# Stopped and removed when the CI script ends, however it ends (a machine that runs it again keeps no servers).
trap 'su postgres -c "$pg_bin/pg_ctl -D $pg_dir/data -m immediate stop" >/dev/null 2>&1; rm -rf "$pg_dir"' EXIT
