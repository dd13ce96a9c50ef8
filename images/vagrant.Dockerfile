# A "VM-like" Debian 12 host for Vagrant's docker provider (see images/build.sh --vagrant):
# systemd as PID 1, sshd, a `vagrant` user with passwordless sudo, python3 for Ansible, and
# Vagrant's insecure public key (what every Vagrant box accepts on first boot; the Vagrantfile
# replaces it with the lab's own key). SSH host keys are generated at first boot, so no two
# containers share them. Run it like the systemd image: --cap-add SYS_ADMIN
#   --security-opt seccomp=unconfined --security-opt apparmor=unconfined --tmpfs /run
#   --tmpfs /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup:ro   (never --privileged, never :rw)
FROM local/debian:bookworm-systemd
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      openssh-server sudo less \
 && rm -rf /var/lib/apt/lists/* && touch -d @0 /var/lib/apt/lists \
 && rm -f /etc/ssh/ssh_host_*key* \
 && useradd --create-home --shell /bin/bash vagrant \
 && install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.ssh \
 && printf 'vagrant ALL=(ALL) NOPASSWD: ALL\n' >/etc/sudoers.d/vagrant \
 && chmod 0440 /etc/sudoers.d/vagrant \
 && visudo -c -q \
 && printf 'UseDNS no\nPasswordAuthentication no\n' >/etc/ssh/sshd_config.d/vagrant.conf \
 && install -d /etc/systemd/system/ssh.service.d \
 && printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
      >/etc/systemd/system/ssh.service.d/host-keys.conf \
 && systemctl enable ssh.service
COPY vagrant.pub /home/vagrant/.ssh/authorized_keys
RUN chown vagrant:vagrant /home/vagrant/.ssh/authorized_keys \
 && chmod 0600 /home/vagrant/.ssh/authorized_keys
