#!/usr/bin/env bash
# Install the Debian 12 packages a make target needs; what is present is left
# alone (nothing is done, not even apt-get update, when all are present).
#
#   bash tools/bootstrap.sh run     `make run`: Redis, PostgreSQL, python3-venv
#   bash tools/bootstrap.sh image   `make image`: podman, runc, debootstrap, slirp4netns
#   bash tools/bootstrap.sh [test]  `make test` / `make bench`: all of the above, and
#                                   nginx + nchan, Chromium, openssl, Prometheus,
#                                   Node.js + npm, then ioredis into .run/node
#
# As non-root it only reports the missing system packages.
#
# The Debian packages would normally start system-wide redis/postgresql/nginx/
# prometheus services; we block that during the install (policy-rc.d) and stop
# any that got started anyway (recommends such as prometheus-node-exporter are
# not installed). Our tests start their own throwaway instances.
set -euo pipefail

profile=${1:-test}
case "$profile" in
    run|image|test) ;;
    *) echo "usage: $0 [run|image|test]" >&2; exit 2 ;;
esac

missing=()

have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

have_pg_server() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/postgres" ] && [ -x "$d/initdb" ] && return 0
    done
    have_cmd postgres && have_cmd initdb
}

have_nchan() {
    have_pkg libnginx-mod-nchan || [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ]
}

# make run: the services it starts, and make itself
if [ "$profile" != image ]; then
    have_cmd redis-server || missing+=(redis-server)
    have_cmd redis-cli    || missing+=(redis-tools)
    have_pg_server        || missing+=(postgresql)
    have_cmd make         || missing+=(make)
fi
# The container image (tools/image.py, tests/test_image_e2e.py and the compose
# test): rootful podman on runc, debootstrap for the local Python base,
# slirp4netns for containers in their own network namespace.
if [ "$profile" != run ]; then
    have_cmd podman       || missing+=(podman)
    have_cmd runc         || missing+=(runc)
    have_cmd debootstrap  || missing+=(debootstrap)
    have_cmd slirp4netns  || missing+=(slirp4netns)
fi
if [ "$profile" = test ]; then
    { have_cmd nginx || [ -x /usr/sbin/nginx ]; } || missing+=(nginx)
    have_nchan            || missing+=(libnginx-mod-nchan)
    { have_cmd chromium || have_cmd chromium-browser; } || missing+=(chromium)
    have_cmd chromedriver || missing+=(chromium-driver)
    # The TLS/HTTP/2 edge tests: a throwaway self-signed certificate, and a real
    # Prometheus (with promtool) evaluating config/prometheus/alerts.yml.
    have_cmd openssl      || missing+=(openssl)
    { have_cmd prometheus && have_cmd promtool; } || missing+=(prometheus)
fi
# `python3 -m venv` needs ensurepip, which Debian ships separately.
if have_cmd python3 && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if [ "$(command -v python3)" = /usr/bin/python3 ]; then
        missing+=(python3-venv)
    else
        echo "bootstrap: WARNING: $(command -v python3) cannot create venvs (no ensurepip)" >&2
    fi
fi

# The suite runs the Node (ioredis) publishing snippet of docs/publishing.md
# (tests/test_publish_node.py fails without node): Debian's nodejs and npm, then
# ioredis into .run/node (install_ioredis, below; not a dependency of the gateway).
# Installed in an apt-get call of their own: a node from elsewhere (NodeSource)
# can conflict with Debian's npm, and that must not stop the rest.
node_missing=()
if [ "$profile" = test ]; then
    have_cmd node         || node_missing+=(nodejs)
    have_cmd npm          || node_missing+=(npm)
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# ioredis 5 into $repo/.run/node/node_modules (the test's default NODE_PATH),
# once node and npm exist; npm's output goes to .run/node/npm-install.log.
install_ioredis() {
    local dir="$repo/.run/node"
    [ "$profile" = test ] || return 0
    [ -d "$dir/node_modules/ioredis" ] && return 0
    if ! have_cmd node || ! have_cmd npm; then
        echo "bootstrap: node/npm missing: ioredis not installed (tests/test_publish_node.py fails)" >&2
        return 0
    fi
    echo "bootstrap: installing ioredis into .run/node"
    mkdir -p "$dir"
    if ! npm install --prefix "$dir" --no-audit --no-fund ioredis@5 >"$dir/npm-install.log" 2>&1; then
        echo "bootstrap: WARNING: npm install ioredis@5 failed (tests/test_publish_node.py fails):" >&2
        tail -n 5 "$dir/npm-install.log" >&2
    fi
}

if [ ${#missing[@]} -eq 0 ] && [ ${#node_missing[@]} -eq 0 ]; then
    install_ioredis
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    all=("${missing[@]}" "${node_missing[@]}")
    echo "bootstrap: missing system packages ($profile): ${all[*]}" >&2
    echo "bootstrap: not root; install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${all[*]}" >&2
    install_ioredis
    exit 0
fi

echo "bootstrap: installing ${missing[*]} ${node_missing[*]}"
export DEBIAN_FRONTEND=noninteractive

# Keep apt from starting the packaged services (invoke-rc.d honours this).
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
fi
cleanup() { if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ ${#node_missing[@]} -gt 0 ] &&
    ! apt-get install -y -qq --no-install-recommends "${node_missing[@]}"; then
    echo "bootstrap: WARNING: could not install ${node_missing[*]} (tests/test_publish_node.py fails)" >&2
fi

cleanup
own_policy=0

# Stop (and disable) whatever apt may have started anyway. Tolerate absence.
for svc in redis-server postgresql nginx prometheus; do
    if [ -e "/etc/init.d/$svc" ] || [ -e "/lib/systemd/system/$svc.service" ]; then
        if have_cmd systemctl && [ -d /run/systemd/system ]; then
            systemctl stop "$svc" >/dev/null 2>&1 || true
            systemctl disable "$svc" >/dev/null 2>&1 || true
        elif have_cmd service; then
            service "$svc" stop >/dev/null 2>&1 || true
        fi
    fi
done

install_ioredis
echo "bootstrap: done"
