#!/bin/sh
# Install Debian packages the tests need, without letting them start anything.
#
#   tests/debian-packages.sh PACKAGE...
#
# Packages such as prometheus or containerd register system services. A policy-rc.d
# (ours only when none is there) keeps them from starting, and they are disabled
# afterwards: the tests start their own processes, on their own sockets and ports.
# Packages already installed are not touched.
set -eu
missing=
for package in "$@"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
    || missing="$missing $package"
done
[ -n "$missing" ] || exit 0

sudo=
[ "$(id -u)" = 0 ] || sudo=sudo
policy=/usr/sbin/policy-rc.d
ours=
if [ ! -e $policy ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee $policy >/dev/null
  $sudo chmod 755 $policy
  ours=1
fi
trap '[ -z "$ours" ] || $sudo rm -f $policy' EXIT
$sudo apt-get update
# shellcheck disable=SC2086
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
for service in prometheus prometheus-alertmanager prometheus-node-exporter containerd; do
  if [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now $service >/dev/null 2>&1 || true
  elif command -v update-rc.d >/dev/null; then
    $sudo update-rc.d $service disable >/dev/null 2>&1 || true
  fi
done
