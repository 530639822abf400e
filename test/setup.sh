#!/usr/bin/env bash
# Installs what the test suite needs on a fresh clone, so `npm test` works on its own:
# the npm packages, and (as root) the Debian packages the tests drive (sysstat for the metric
# accuracy tests, sshd and Ansible for the shell-fanout peers, chromium for the dashboard tests).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x node_modules/.bin/mocha ] || [ ! -x node_modules/.bin/tsc ] || ! node -e "require('better-sqlite3')" 2>/dev/null; then
  echo "test setup: installing npm packages (npm ci)" >&2
  npm ci --no-audit --no-fund
fi

need=()
command -v mpstat >/dev/null || need+=(sysstat)
command -v ip >/dev/null || need+=(iproute2)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v ansible >/dev/null || need+=(ansible)
[ -x /usr/bin/chromium ] || need+=(chromium)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test setup: installing Debian packages: ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "test setup: missing ${need[*]} and not root: the tests that drive them will fail" >&2
  fi
fi
