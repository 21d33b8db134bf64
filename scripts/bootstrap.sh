#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian machine (run as root, or as a user with sudo):
#   1. system packages, only those missing: redis-server, a Java 17 JDK, Maven,
#      python3.11 + venv;
#   2. Debian's own redis-server service kept off: the package would start a Redis on
#      6379, our default port (settings.redis.port); we run our own Redis with data in
#      <run_dir>/redis (ops/infra/redis_server.py), so the packaged service
#      is never started by the install (policy-rc.d) and is stopped + disabled if running;
#   3. .venv with python3.11 and `pip install -e '.[dev]'` (again only when
#      pyproject.toml changed since the last bootstrap);
#   4. the Kafka broker jars and the Flink Kafka connector (Maven, infra/pom.xml).
# With --tests (or CI=true, or PZ_BOOTSTRAP_TESTS=1) also what only the tests need:
# Debian's chromium, which the dashboard e2e test drives headless; Debian's prometheus
# (promtool tests the alert rules, the server scrapes a test stack) with its packaged
# service kept off like redis-server's; Debian's docker-compose, which parses
# docker-compose.yml without a Docker engine.
# With --bench also what only the benchmarks need: ghz (the gRPC load generator of
# `bench serving` and `bench stack`), built with the machine's Go from the Go module
# proxy at a pinned version into .venv/bin (found there by bench/serving.find_ghz).
# Safe with CI=true and no stdin. Prints a summary of what it did.
set -euo pipefail

for_tests=0
for_bench=0
case "${CI:-}" in true | 1) for_tests=1 ;; esac
[ "${PZ_BOOTSTRAP_TESTS:-0}" = 1 ] && for_tests=1
for arg in "$@"; do
  case "$arg" in
    --tests) for_tests=1 ;;
    --bench) for_bench=1 ;;
    *) echo "bootstrap: unknown option $arg" >&2; exit 2 ;;
  esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export DEBIAN_FRONTEND=noninteractive
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

did=()
note() { did+=("$1"); echo "bootstrap: $1"; }

if [ "$(id -u)" -eq 0 ]; then
  as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
  as_root() { sudo -n "$@"; }
else
  as_root() { echo "bootstrap: need root for: $*" >&2; return 1; }
fi

# --- 1. system packages ---------------------------------------------------------------
missing=()
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
if ! command -v python3.11 >/dev/null 2>&1; then
  missing+=(python3.11 python3.11-venv)
elif [ ! -x .venv/bin/python ] && ! python3.11 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3.11-venv)
fi
if [ "$for_tests" = 1 ] && ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  missing+=(chromium)
fi
if [ "$for_tests" = 1 ] && ! command -v promtool >/dev/null 2>&1; then
  missing+=(prometheus)
fi
if [ "$for_tests" = 1 ] && ! command -v docker-compose >/dev/null 2>&1; then
  missing+=(docker-compose)
fi

if [ ${#missing[@]} -gt 0 ]; then
  # Keep maintainer scripts from starting services (the packaged redis-server on 6379,
  # prometheus on 9090) while installing: policy-rc.d exit 101 = "action forbidden".
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    made_policy=1
  fi
  trap 'if [ "$made_policy" = 1 ]; then as_root rm -f "$policy"; fi' EXIT
  as_root apt-get update -q
  as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
  if [ "$made_policy" = 1 ]; then as_root rm -f "$policy"; made_policy=0; fi
  note "installed: ${missing[*]}"
else
  extra=""
  [ "$for_tests" = 1 ] && extra=", chromium, promtool, docker-compose"
  note "system packages already present (redis-server, java, mvn, python3.11$extra)"
fi

# --- 2. the packaged redis-server service stays off ------------------------------------
if [ -e /lib/systemd/system/redis-server.service ] || [ -e /etc/init.d/redis-server ]; then
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    if systemctl is-enabled --quiet redis-server 2>/dev/null \
      || systemctl is-active --quiet redis-server 2>/dev/null; then
      as_root systemctl disable --now redis-server >/dev/null 2>&1 || true
      note "stopped and disabled the system redis-server service"
    fi
  elif [ -e /run/redis/redis-server.pid ] && kill -0 "$(cat /run/redis/redis-server.pid)" 2>/dev/null; then
    as_root service redis-server stop >/dev/null 2>&1 || true
    note "stopped the system redis-server service"
  fi
  if command -v update-rc.d >/dev/null 2>&1 && [ -e /etc/init.d/redis-server ]; then
    as_root update-rc.d redis-server disable >/dev/null 2>&1 || true
  fi
fi

# --- 2b. the packaged prometheus service stays off too (tests run their own) -----------
if [ -e /lib/systemd/system/prometheus.service ] || [ -e /etc/init.d/prometheus ]; then
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    if systemctl is-enabled --quiet prometheus 2>/dev/null \
      || systemctl is-active --quiet prometheus 2>/dev/null; then
      as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
      note "stopped and disabled the system prometheus service"
    fi
  elif [ -e /run/prometheus/prometheus.pid ] && kill -0 "$(cat /run/prometheus/prometheus.pid)" 2>/dev/null; then
    as_root service prometheus stop >/dev/null 2>&1 || true
    note "stopped the system prometheus service"
  fi
  if command -v update-rc.d >/dev/null 2>&1 && [ -e /etc/init.d/prometheus ]; then
    as_root update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
fi

# --- 3. virtualenv + project -----------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv
  note "created .venv (python3.11)"
fi
stamp=.venv/.pz-bootstrap-stamp
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" >"$stamp"
  note "pip install -e '.[dev]' into .venv"
else
  note ".venv up to date with pyproject.toml"
fi

# --- 4. jars ---------------------------------------------------------------------------
.venv/bin/python -m ops.infra.jars
note "jars present (Kafka broker, Flink Kafka connector)"

# --- 5. bench tools (--bench) ----------------------------------------------------------
ghz_version=v0.93.0
if [ "$for_bench" = 1 ]; then
  # `go install` stamps no version into the binary ("dev"): a stamp file says which.
  ghz_stamp=.venv/.pz-ghz-version
  if [ -x .venv/bin/ghz ] && [ "$(cat "$ghz_stamp" 2>/dev/null || true)" = "$ghz_version" ]; then
    note "ghz $ghz_version present (.venv/bin)"
  elif command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ]; then
    go_cmd="$(command -v go || echo /usr/local/go/bin/go)"
    GOBIN="$root/.venv/bin" "$go_cmd" install "github.com/bojand/ghz/cmd/ghz@$ghz_version"
    echo "$ghz_version" >"$ghz_stamp"
    note "ghz $ghz_version built into .venv/bin (go install)"
  else
    echo "bootstrap: --bench needs Go for ghz (Debian: apt-get install golang-go)" >&2
    exit 1
  fi
fi

echo
echo "bootstrap done:"
for line in "${did[@]}"; do echo "  - $line"; done
