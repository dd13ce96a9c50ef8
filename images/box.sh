#!/usr/bin/env bash
# A Debian 12 VM box built from Debian's archive only (no box registry), and its boot test.
#
#   images/box.sh build            build the disk and the vagrant-libvirt box unless cached
#   images/box.sh path             print the cache directory of the current recipe
#   images/box.sh boot DIR PORT    boot DIR/disk.qcow2 (copy-on-write) under QEMU, SSH on PORT
#
# Recipe: mmdebstrap (linux-image-amd64, systemd, udev, sshd, sudo, python3, systemd-networkd with
# DHCP on eth0) into a directory; `mke2fs -d` turns it into the root filesystem and a small FAT
# partition holds syslinux, the kernel and the initrd, so nothing is mounted and no loop device is
# needed. User `vagrant` (passwordless sudo) accepts Vagrant's insecure key, like any Vagrant box.
# Outputs (in $LAB_BOX_DIR/<recipe hash>/, default .lab/box/): disk.qcow2 and
# insectarium-debian12.libvirt.box (metadata.json + box.img). A build is reused as long as its
# recipe (this file, the key, the mirrors, the host's extra CAs) is unchanged.
#
# The kernel and initrd live on the FAT partition, which the VM does not mount: a kernel upgrade
# inside the VM is not booted until the box is rebuilt.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
BOX_DIR="${LAB_BOX_DIR:-$root/.lab/box}"
BOX_NAME=insectarium-debian12
DISK_SIZE_GIB=8
BOOT_MIB=128
PACKAGES=linux-image-amd64,initramfs-tools,zstd,systemd-sysv,udev,dbus,kmod,systemd-resolved,openssh-server,sudo,python3,python3-apt,ca-certificates,iproute2,procps,netbase,less

# shellcheck source=images/debian-source.sh
. "$here/debian-source.sh"  # DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR, debian_ca_hooks

vagrant_key() {  # $1 = vagrant (private) or vagrant.pub
    local k
    for k in /usr/share/rubygems-integration/all/gems/vagrant-*/keys/"$1" \
        /opt/vagrant/embedded/gems/gems/vagrant-*/keys/"$1"; do
        [[ -r $k ]] && { echo "$k"; return 0; }
    done
    echo "box: Vagrant's insecure key not found (install vagrant: ./lab bootstrap)" >&2
    return 1
}

recipe_hash() {
    {
        cat "${BASH_SOURCE[0]}" "$here/debian-source.sh" "$(vagrant_key vagrant.pub)"
        echo "$DEBIAN_MIRROR $DEBIAN_SECURITY_MIRROR"
        cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true
    } | sha256sum | cut -c1-16
}

# Run inside mmdebstrap's customize hook: $1 is the root filesystem.
customize() {
    local r="$1"
    echo debian12 >"$r/etc/hostname"
    chmod 0644 "$r/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\tdebian12\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
    printf 'LABEL=root\t/\text4\terrors=remount-ro\t0\t1\n' >"$r/etc/fstab"
    # The first NIC (Vagrant's management network, or QEMU's user network) by DHCP; Vagrant
    # writes 50-vagrant-eth1.network for the private network itself.
    printf '[Match]\nName=eth0\n\n[Network]\nDHCP=yes\n' >"$r/etc/systemd/network/10-eth0.network"
    ln -sf ../run/systemd/resolve/stub-resolv.conf "$r/etc/resolv.conf"
    chroot "$r" systemctl enable systemd-networkd.service systemd-resolved.service ssh.service >/dev/null 2>&1
    chroot "$r" systemctl enable serial-getty@ttyS0.service >/dev/null 2>&1 || true
    # Each VM gets its own machine id (so its own DHCP identity) and its own SSH host keys.
    : >"$r/etc/machine-id"
    rm -f "$r"/etc/ssh/ssh_host_*key*
    mkdir -p "$r/etc/systemd/system/ssh.service.d"
    printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
        >"$r/etc/systemd/system/ssh.service.d/host-keys.conf"
    printf 'UseDNS no\nPasswordAuthentication no\n' >"$r/etc/ssh/sshd_config.d/vagrant.conf"
    chroot "$r" useradd --create-home --shell /bin/bash vagrant
    printf 'vagrant ALL=(ALL) NOPASSWD: ALL\n' >"$r/etc/sudoers.d/vagrant"
    chmod 0440 "$r/etc/sudoers.d/vagrant"
    install -d -m 0700 "$r/home/vagrant/.ssh"
    install -m 0600 "$(vagrant_key vagrant.pub)" "$r/home/vagrant/.ssh/authorized_keys"
    chroot "$r" chown -R vagrant:vagrant /home/vagrant/.ssh
    # Apt lists are dropped (smaller box); an old mtime makes cache_valid_time refresh them.
    rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin
    touch -d @0 "$r/var/lib/apt/lists"
}

WORK=""
build() {
    local hash dir work start=$SECONDS
    hash="$(recipe_hash)"
    dir="$BOX_DIR/$hash"
    if [[ -f "$dir/$BOX_NAME.libvirt.box" && -f "$dir/disk.qcow2" ]]; then
        echo "box: $dir is up to date (recipe $hash)"
        link "$hash"
        return 0
    fi
    for tool in mmdebstrap mke2fs mkfs.vfat mcopy syslinux sfdisk qemu-img; do
        command -v "$tool" >/dev/null || { echo "box: $tool missing (./lab box build installs it)" >&2; exit 1; }
    done
    echo "box: building recipe $hash from $DEBIAN_MIRROR"
    mkdir -p "$BOX_DIR"
    work="$(mktemp -d "$BOX_DIR/build.XXXXXX")"
    WORK="$work"
    trap 'rm -rf "$WORK"' EXIT

    local t=$SECONDS
    mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
        --aptopt='Acquire::Check-Valid-Until "false"' --aptopt='Acquire::Languages "none"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        "${debian_ca_hooks[@]}" --customize-hook="\"${BASH_SOURCE[0]}\" customize \"\$1\"" \
        bookworm "$work/rootfs" "deb $DEBIAN_MIRROR bookworm main" \
        "deb $DEBIAN_MIRROR bookworm-updates main" \
        "deb $DEBIAN_SECURITY_MIRROR bookworm-security main"
    echo "box: root filesystem in $((SECONDS - t)) s ($(du -sh "$work/rootfs" | cut -f1))"

    # Boot partition: FAT with syslinux, the kernel and the initrd (mtools: no mount needed).
    t=$SECONDS
    local kernel initrd
    kernel="$(readlink -f "$work/rootfs/vmlinuz")"
    initrd="$(readlink -f "$work/rootfs/initrd.img")"
    [[ -f $kernel && -f $initrd ]] || { echo "box: no kernel/initrd in the root filesystem" >&2; exit 1; }
    cat >"$work/syslinux.cfg" <<'CFG'
DEFAULT debian
TIMEOUT 1
PROMPT 0
LABEL debian
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND root=LABEL=root ro net.ifnames=0 console=tty0 console=ttyS0,115200n8
CFG
    mkfs.vfat -F 32 -n BOOT -C "$work/boot.img" $((BOOT_MIB * 1024)) >/dev/null
    mcopy -i "$work/boot.img" "$kernel" ::/vmlinuz
    mcopy -i "$work/boot.img" "$initrd" ::/initrd.img
    mcopy -i "$work/boot.img" "$work/syslinux.cfg" ::/syslinux.cfg
    syslinux --install "$work/boot.img"

    # Root partition straight from the directory, then one MBR disk: [1 MiB][boot][root].
    local disk_bytes=$((DISK_SIZE_GIB * 1024 * 1024 * 1024)) root_start_mib=$((1 + BOOT_MIB))
    truncate -s $((disk_bytes - root_start_mib * 1024 * 1024)) "$work/root.img"
    mke2fs -q -F -t ext4 -L root -d "$work/rootfs" "$work/root.img"
    truncate -s "$disk_bytes" "$work/disk.raw"
    printf 'label: dos\nunit: sectors\nstart=2048, size=%d, type=c, bootable\nstart=%d, type=83\n' \
        $((BOOT_MIB * 2048)) $((root_start_mib * 2048)) | sfdisk --quiet "$work/disk.raw"
    dd if=/usr/lib/syslinux/mbr/mbr.bin of="$work/disk.raw" bs=440 count=1 conv=notrunc status=none
    dd if="$work/boot.img" of="$work/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
    dd if="$work/root.img" of="$work/disk.raw" bs=1M seek="$root_start_mib" conv=notrunc,sparse status=none
    qemu-img convert -c -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
    echo "box: disk in $((SECONDS - t)) s ($(du -h "$work/disk.qcow2" | cut -f1) qcow2, ${DISK_SIZE_GIB} GiB virtual)"

    # vagrant-libvirt box (format v1): metadata.json + box.img (+ a Vagrantfile of defaults).
    mkdir -p "$work/box"
    ln "$work/disk.qcow2" "$work/box/box.img"
    printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$DISK_SIZE_GIB" >"$work/box/metadata.json"
    cat >"$work/box/Vagrantfile" <<'VF'
# Defaults of the insectarium Debian 12 box (built by images/box.sh from Debian's archive).
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.disk_bus = "virtio"
    lv.nic_model_type = "virtio"
    lv.memory = 1024
  end
end
VF
    tar -C "$work/box" -cf "$work/$BOX_NAME.libvirt.box" metadata.json Vagrantfile box.img
    rm -rf "$work/box"

    mkdir -p "$dir"
    mv "$work/disk.qcow2" "$work/$BOX_NAME.libvirt.box" "$dir/"
    echo "$hash" >"$dir/recipe"
    link "$hash"
    # Builds of older recipes are not used any more (about 0.5 GB each).
    local old
    for old in "$BOX_DIR"/*; do
        [[ ${old##*/} =~ ^[0-9a-f]{16}$ && ! -L $old && $old != "$dir" && -f $old/recipe ]] && rm -rf "$old"
    done
    echo "box: built $dir in $((SECONDS - start)) s"
}

link() {  # hash: point .lab/box/current and the box file at this build
    ln -sfn "$1" "$BOX_DIR/current"
    ln -sfn "$1/$BOX_NAME.libvirt.box" "$BOX_DIR/$BOX_NAME.libvirt.box"
}

# Boot a throw-away copy of the disk under QEMU with software emulation (TCG: KVM guests hang on
# these machines), SSH forwarded to 127.0.0.1:PORT. Prints the QEMU pid; console in DIR/console.log.
boot() {  # dir, port, [memory MiB]
    local dir="$1" port="$2" mem="${3:-1536}"
    qemu-img create -q -f qcow2 -F qcow2 -b "$BOX_DIR/current/disk.qcow2" "$dir/overlay.qcow2"
    qemu-system-x86_64 -accel tcg -m "$mem" -smp 2 -display none -daemonize \
        -pidfile "$dir/qemu.pid" -serial "file:$dir/console.log" \
        -drive "file=$dir/overlay.qcow2,if=virtio,format=qcow2" \
        -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0
    cat "$dir/qemu.pid"
}

case "${1:-}" in
    build) build ;;
    path) echo "$BOX_DIR/$(recipe_hash)" ;;
    customize) customize "$2" ;;
    boot) boot "$2" "$3" "${4:-}" ;;
    insecure-key) vagrant_key vagrant ;;
    *) sed -n '2,6p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
