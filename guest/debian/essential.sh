#!/bin/sh
# mmdebstrap --essential-hook of Yun's full Debian image (src/images/full.ts), run on the host once
# the Essential packages are installed and before the rest are: $1 is the target's root directory.
# It puts in the files that must be there when the other packages' maintainer scripts run (the
# initramfs-tools configuration, read by the update-initramfs that linux-image's postinst runs).
# None of them is a conffile of a package, so dpkg has nothing to ask about.
set -eu
root="$1"
here="$(cd "$(dirname "$0")" && pwd)"
"$here/install-files.sh" "$here/early-rootfs" "$root"
