#!/usr/bin/env bash
# Build the local base images used by the docker lab and molecule, without any image registry:
#   local/debian:bookworm          mmdebstrap | docker import (tini as ENTRYPOINT, sleep infinity)
#   local/debian:bookworm-systemd  docker build FROM the above (systemd as PID 1)
# Images that already exist are kept; pass --force to rebuild.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
force=0
[[ "${1:-}" == "--force" ]] && force=1

BASE=local/debian:bookworm
SYSTEMD=local/debian:bookworm-systemd

have() { docker image inspect "$1" >/dev/null 2>&1; }

# Read the mirrors from the host's deb822 sources (fall back to deb.debian.org).
mirror_for() {  # $1 = suite to look for
    local f=/etc/apt/sources.list.d/debian.sources
    [[ -r $f ]] || return 0
    awk -v want="$1" '
        /^URIs:/ {uri=$2}
        /^Suites:/ {for (i = 2; i <= NF; i++) if ($i == want) found = uri}
        /^$/ {uri=""}
        END {if (found) print found}' "$f"
}
DEBIAN_MIRROR="${DEBIAN_MIRROR:-$(mirror_for bookworm)}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-$(mirror_for bookworm-security)}"
DEBIAN_SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

# Extra CAs the host trusts (a TLS-inspecting egress proxy, a site CA) are trusted inside the
# images too, and pip is pointed at the system bundle, so containers can reach PyPI like the host.
ca_hooks=()
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    ca_hooks+=(--customize-hook='sync-in /usr/local/share/ca-certificates /usr/local/share/ca-certificates'
        --customize-hook='chroot "$1" update-ca-certificates >/dev/null')
fi
ca_hooks+=(--customize-hook='printf "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n" > "$1/etc/pip.conf"')

if [[ $force == 1 ]] || ! have "$BASE"; then
    echo "images: building $BASE from $DEBIAN_MIRROR (mmdebstrap | docker import)"
    start=$SECONDS
    mmdebstrap --quiet --variant=minbase \
        --include=python3,python3-apt,ca-certificates,procps,iproute2,tini \
        --aptopt='Acquire::Check-Valid-Until "false"' --aptopt='Acquire::Languages "none"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --customize-hook='touch -d @0 "$1/var/lib/apt/lists"' "${ca_hooks[@]}" \
        bookworm - "deb $DEBIAN_MIRROR bookworm main" \
        "deb $DEBIAN_MIRROR bookworm-updates main" \
        "deb $DEBIAN_SECURITY_MIRROR bookworm-security main" \
        | docker import -c 'ENTRYPOINT ["/usr/bin/tini","-s","--"]' -c 'CMD ["sleep","infinity"]' - "$BASE" >/dev/null
    echo "images: $BASE built in $((SECONDS - start)) s"
else
    echo "images: $BASE exists (use --force to rebuild)"
fi

if [[ $force == 1 ]] || ! have "$SYSTEMD"; then
    echo "images: building $SYSTEMD"
    start=$SECONDS
    docker build --quiet -t "$SYSTEMD" -f "$here/systemd.Dockerfile" "$here" >/dev/null
    echo "images: $SYSTEMD built in $((SECONDS - start)) s"
else
    echo "images: $SYSTEMD exists (use --force to rebuild)"
fi
