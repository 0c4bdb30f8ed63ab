#!/bin/sh
# mmdebstrap --customize-hook of Yun's full Debian image (src/images/full.ts), run on the host after
# every package is installed and configured: $1 is the target's root directory. It copies in Yun's
# guest files, trims boot of units that cost time in a VM and do nothing useful there, writes
# u-boot-menu's extlinux.conf, and checks that every maintainer script ran.
set -eu
root="$1"
here="$(cd "$(dirname "$0")" && pwd)"

# Yun's files (networkd, getty autologin, cloud-init, u-boot-menu defaults, fstab, hostname), owned by root.
"$here/install-files.sh" "$here/rootfs" "$root"

# Periodic maintenance that only slows a VM down (and fights the user's first commands for the CPU):
# package list refreshes and unattended upgrades, dpkg database backups, e2scrub, fstrim of a sparse disk;
# and systemd-binfmt, whose only entry (python3's, for running .pyc files directly) kept boot waiting
# minutes on the binfmt_misc automount on a slow machine.
for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service \
  fstrim.timer man-db.timer systemd-binfmt.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done

# systemd-ssh-generator offers sshd over AF_VSOCK, which Yun's machine does not have: it fails
# after seconds of trying at every boot. sshd itself runs as ssh.service.
mkdir -p "$root/etc/systemd/system-generators"
ln -sf /dev/null "$root/etc/systemd/system-generators/systemd-ssh-generator"

# The network: systemd-networkd with its resolver; ifupdown (if any) would configure the NICs twice.
chroot "$root" systemctl enable systemd-networkd.service systemd-resolved.service >/dev/null 2>&1
if [ -e "$root/usr/lib/systemd/system/networking.service" ]; then
  chroot "$root" systemctl disable networking.service >/dev/null 2>&1 || true
fi
ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"

# SSH host keys are per machine: none in the image; cloud-init or ssh.service's yun-hostkeys.conf makes them.
rm -f "$root"/etc/ssh/ssh_host_*

# U-Boot's extlinux.conf from /etc/default/u-boot (root partition, serial console).
chroot "$root" u-boot-update

# Every package configured, no half-installed one left behind.
audit="$(chroot "$root" dpkg --audit)"
if [ -n "$audit" ]; then
  echo "dpkg --audit in the image reports:" >&2
  echo "$audit" >&2
  exit 1
fi
