#!/usr/bin/env bash
# Installs what the tests and the benchmark run for real: Samba (smbd, smbclient) and
# restic from Debian's packages. Idempotent: does nothing when they are present.
set -euo pipefail
need=()
command -v smbd >/dev/null 2>&1 || need+=(samba)
command -v smbclient >/dev/null 2>&1 || need+=(smbclient)
command -v restic >/dev/null 2>&1 || need+=(restic)
if ((${#need[@]})); then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    echo "installing ${need[*]} (apt)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
