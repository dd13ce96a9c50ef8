# Sourced by images/build.sh and images/box.sh: where mmdebstrap fetches Debian from, and the
# hooks that make an image trust what the host trusts.
#
# DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR: from the environment, else the host's deb822 sources
# (/etc/apt/sources.list.d/debian.sources), else deb.debian.org.
# debian_ca_hooks: mmdebstrap options that copy the host's extra CAs (a TLS-inspecting egress
# proxy, a site CA) into the image and point pip at the system bundle, so machines built from it
# reach PyPI like the host.

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

debian_ca_hooks=()
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    debian_ca_hooks+=(--customize-hook='sync-in /usr/local/share/ca-certificates /usr/local/share/ca-certificates'
        --customize-hook='chroot "$1" update-ca-certificates >/dev/null')
fi
debian_ca_hooks+=(--customize-hook='printf "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n" > "$1/etc/pip.conf"')
