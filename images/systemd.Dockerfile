# systemd as PID 1 on top of the mmdebstrap base image (see images/build.sh).
# The empty apt lists get an old mtime so that apt's cache_valid_time triggers an update.
# Run it with: --cap-add SYS_ADMIN --security-opt seccomp=unconfined --security-opt apparmor=unconfined
#   --tmpfs /run --tmpfs /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup:ro   (never --privileged, never :rw)
FROM local/debian:bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd systemd-sysv dbus \
 && rm -rf /var/lib/apt/lists/* && touch -d @0 /var/lib/apt/lists \
 && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
      /lib/systemd/system/local-fs.target.wants/* \
      /lib/systemd/system/sockets.target.wants/*udev* /lib/systemd/system/sockets.target.wants/*initctl* \
      /lib/systemd/system/sysinit.target.wants/systemd-tmpfiles-setup* \
 && systemctl mask systemd-udevd.service systemd-udevd-kernel.socket systemd-udevd-control.socket \
      getty.target console-getty.service
ENTRYPOINT []
STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
