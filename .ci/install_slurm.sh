#!/usr/bin/env bash
# Debian packages for tests/test_slurm.py, which starts a one-node SLURM cluster (Debian
# 12: SLURM 22.05): controller, node daemon, accounting daemon and its MariaDB, clients,
# munge. Idempotent and quick when they are installed; needs root and apt-get otherwise.
# Nothing is started here (the test starts and stops its own daemons).
set -euo pipefail

packages=(slurmctld slurmd slurmdbd slurm-client munge mariadb-server)
missing=()
for package in "${packages[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)"
    [ "$status" = "install ok installed" ] || missing+=("$package")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null; then
    echo "install_slurm.sh: installing ${missing[*]} needs root and apt-get" >&2
    exit 1
fi
echo "install_slurm.sh: installing ${missing[*]}"
# Keep the packages' init scripts from starting daemons (as in container images).
policy=/usr/sbin/policy-rc.d
ours=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    ours=1
fi
trap '[ -z "$ours" ] || rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
