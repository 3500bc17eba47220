#!/usr/bin/env bash
# Installs a Vulkan driver Dawn can use when no adapter is present.
# On Debian 12 the stock Mesa (22.3) is too old for Dawn, so Mesa comes from
# bookworm-backports; on newer Debian/Ubuntu the stock packages are recent enough.
# Safe to run twice: it does nothing when lavapipe (or another ICD) is installed.
set -euo pipefail
if ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 && ldconfig -p | grep -q libvulkan.so.1; then
  echo "setup-vulkan: a Vulkan driver is already installed"; exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  cat >&2 <<'MSG'
setup-vulkan: no Vulkan driver found, and this is not a root Debian/Ubuntu shell.
Install Mesa's software Vulkan driver (lavapipe) as root:
  Debian 12:  echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/backports.list
              apt-get update && apt-get install -y -t bookworm-backports mesa-vulkan-drivers libvulkan1
  Ubuntu / Debian 13+:  apt-get update && apt-get install -y mesa-vulkan-drivers libvulkan1
MSG
  exit 1
fi
. /etc/os-release
export DEBIAN_FRONTEND=noninteractive
if [ "${VERSION_CODENAME:-}" = bookworm ]; then
  echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/retrv-backports.list
  apt-get update -qq
  apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
else
  apt-get update -qq
  apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi
echo "setup-vulkan: installed $(dpkg-query -W -f='${Package} ${Version}' mesa-vulkan-drivers)"
