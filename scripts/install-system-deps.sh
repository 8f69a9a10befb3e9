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

# Azurite (the Azure Storage emulator the Functions tests start) and the Kusto language
# service (tests/kusto/ checks every KQL query in infra/ with it) from the npm registry,
# pinned by package-lock.json. Needs node and npm; installs them from Debian if missing.
cd "$(dirname "$0")/.."
if [[ ! -f node_modules/azurite/dist/src/azurite.js ||
      ! -f node_modules/@kusto/language-service-next/Kusto.Language.Bridge.js ]]; then
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        sudo=""
        [[ $(id -u) -eq 0 ]] || sudo="sudo"
        echo "installing nodejs npm (apt)"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
    fi
    echo "installing azurite and the Kusto language service (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error
fi
