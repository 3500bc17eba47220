#!/usr/bin/env bash
# Installs Debian's headless-capable `chromium` when it is missing; the report test
# (test/train/report.test.ts) renders the HTML report in it and looks at the page.
# Quiet, and safe to run twice: it does nothing when /usr/bin/chromium (or chromium on
# PATH) is already there.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  echo "setup-chromium: chromium is already installed ($(command -v chromium))"; exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  cat >&2 <<'MSG'
setup-chromium: chromium not found, and this is not a root Debian/Ubuntu shell.
Install it as root (Debian):  apt-get update && apt-get install -y chromium
(the report test is skipped without it)
MSG
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "setup-chromium: installed $(dpkg-query -W -f='${Package} ${Version}' chromium)"
