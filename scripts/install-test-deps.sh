#!/bin/sh
# Installs what the test suite needs on a fresh Debian machine (run as root).
# Idempotent: quick when everything is already there.
set -eu

need_pkgs=""
for p in fuse3 attr acl util-linux e2fsprogs xfsprogs libacl1-dev pkg-config fio; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need_pkgs="$need_pkgs $p"
done
if [ -n "$need_pkgs" ]; then
    echo "installing:$need_pkgs"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need_pkgs >/dev/null
fi

# pjdfstest (the Rust rewrite) switches to these users and groups.
getent group nogroup >/dev/null || groupadd -g 65534 nogroup
getent group tests >/dev/null || groupadd tests
id tests >/dev/null 2>&1 || useradd -M -N -g tests -s /usr/sbin/nologin tests

PJD_VERSION=0.2.2
if ! command -v pjdfstest >/dev/null 2>&1 || ! pjdfstest --version 2>/dev/null | grep -q "$PJD_VERSION"; then
    echo "installing pjdfstest $PJD_VERSION"
    cargo install --quiet --locked pjdfstest --version "$PJD_VERSION"
fi
