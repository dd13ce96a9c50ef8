#!/usr/bin/env bash
# Build the local base images used by the docker lab and molecule, without any image registry:
#   local/debian:bookworm          mmdebstrap | docker import (tini as ENTRYPOINT, sleep infinity)
#   local/debian:bookworm-systemd  docker build FROM the above (systemd as PID 1)
#   local/debian:bookworm-vagrant  (with --vagrant) FROM the systemd image: sshd, user vagrant with
#                                  sudo and Vagrant's insecure key, for Vagrant's docker provider
# Images that already exist are kept; pass --force to rebuild. The vagrant image is also rebuilt
# when its recipe (vagrant.Dockerfile, the key) changed: its label insectarium.recipe holds a hash.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
force=0
vagrant=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --vagrant) vagrant=1 ;;
        *) echo "usage: images/build.sh [--force] [--vagrant]" >&2; exit 2 ;;
    esac
done

BASE=local/debian:bookworm
SYSTEMD=local/debian:bookworm-systemd
VAGRANT=local/debian:bookworm-vagrant

have() { docker image inspect "$1" >/dev/null 2>&1; }

# shellcheck source=images/debian-source.sh
. "$here/debian-source.sh"  # DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR, debian_ca_hooks

if [[ $force == 1 ]] || ! have "$BASE"; then
    echo "images: building $BASE from $DEBIAN_MIRROR (mmdebstrap | docker import)"
    start=$SECONDS
    mmdebstrap --quiet --variant=minbase \
        --include=python3,python3-apt,ca-certificates,procps,iproute2,tini \
        --aptopt='Acquire::Check-Valid-Until "false"' --aptopt='Acquire::Languages "none"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --customize-hook='touch -d @0 "$1/var/lib/apt/lists"' "${debian_ca_hooks[@]}" \
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

# Vagrant's insecure public key from the installed vagrant package (the matching private key is
# the one Vagrant uses to reach a fresh box).
vagrant_pubkey() {
    local k
    for k in /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
        /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub; do
        [[ -r $k ]] && { echo "$k"; return 0; }
    done
    return 1
}

if [[ $vagrant == 1 ]]; then
    key="$(vagrant_pubkey)" || { echo "images: vagrant is not installed (./lab bootstrap)" >&2; exit 1; }
    recipe="$(cat "$here/vagrant.Dockerfile" "$key" | sha256sum | cut -c1-16)"
    current="$(docker image inspect -f '{{ index .Config.Labels "insectarium.recipe" }}' "$VAGRANT" 2>/dev/null || true)"
    if [[ $force == 1 || "$current" != "$recipe" ]]; then
        echo "images: building $VAGRANT (recipe $recipe)"
        start=$SECONDS
        ctx="$(mktemp -d)"
        trap 'rm -rf "$ctx"' EXIT
        cp "$here/vagrant.Dockerfile" "$ctx/Dockerfile"
        cp "$key" "$ctx/vagrant.pub"
        docker build --quiet --label "insectarium.recipe=$recipe" -t "$VAGRANT" "$ctx" >/dev/null
        echo "images: $VAGRANT built in $((SECONDS - start)) s"
    else
        echo "images: $VAGRANT is up to date (recipe $recipe)"
    fi
fi
