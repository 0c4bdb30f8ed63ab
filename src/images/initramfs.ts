/**
 * The Debian image's initramfs: a static busybox with its applet links, the kernel modules the
 * virtual machine needs (loaded in dependency order by /init), and an /init that mounts the pseudo
 * file systems and then either switches to the root disk named by root= on the kernel command line
 * (whose init prints the marker), or prints "yun: init ready" and runs an interactive shell on the
 * console.
 */
import { CpioWriter } from "./cpio.js";
import { modulesAlias, modulesDep, type ResolvedModule } from "./modules.js";

/** The marker line /init prints once the system is ready for commands. */
export const INIT_READY_MARKER = "yun: init ready";

/** Where the module load order lives inside the initramfs. */
export const MODULE_ORDER_FILE = "/etc/modules-load.order";
/** The display's modules (virtio-gpu with DRM, virtio-input) beyond those, loaded only for a display. */
export const DISPLAY_MODULE_ORDER_FILE = "/etc/modules-display.order";
/** A share's modules (9p over virtio), loaded only when a virtio-9p device exists. */
export const SHARE_MODULE_ORDER_FILE = "/etc/modules-9p.order";

/** Applets linked when the binary's own applet table cannot be found. */
export const FALLBACK_APPLETS: readonly string[] = [
  "[",
  "[[",
  "ash",
  "awk",
  "base64",
  "basename",
  "bc",
  "cat",
  "chgrp",
  "chmod",
  "chown",
  "chroot",
  "clear",
  "cmp",
  "cp",
  "cpio",
  "cttyhack",
  "cut",
  "date",
  "dd",
  "depmod",
  "df",
  "diff",
  "dirname",
  "dmesg",
  "du",
  "echo",
  "egrep",
  "env",
  "expr",
  "false",
  "fgrep",
  "find",
  "free",
  "grep",
  "gunzip",
  "gzip",
  "halt",
  "head",
  "hexdump",
  "hostname",
  "httpd",
  "id",
  "ifconfig",
  "insmod",
  "ip",
  "kill",
  "killall",
  "less",
  "ln",
  "ls",
  "lsmod",
  "md5sum",
  "mdev",
  "mkdir",
  "mke2fs",
  "mkfifo",
  "mknod",
  "mktemp",
  "modinfo",
  "modprobe",
  "more",
  "mount",
  "mv",
  "nc",
  "nproc",
  "nslookup",
  "od",
  "ping",
  "pivot_root",
  "poweroff",
  "printf",
  "ps",
  "pwd",
  "readlink",
  "realpath",
  "reboot",
  "rm",
  "rmdir",
  "rmmod",
  "route",
  "sed",
  "seq",
  "setsid",
  "sh",
  "sha1sum",
  "sha256sum",
  "sha512sum",
  "sleep",
  "sort",
  "stat",
  "strings",
  "stty",
  "switch_root",
  "sync",
  "sysctl",
  "tail",
  "tar",
  "tee",
  "test",
  "time",
  "timeout",
  "top",
  "touch",
  "tr",
  "true",
  "tty",
  "udhcpc",
  "umount",
  "uname",
  "uniq",
  "unxz",
  "uptime",
  "usleep",
  "vi",
  "watch",
  "wc",
  "wget",
  "which",
  "xargs",
  "xxd",
  "xz",
  "xzcat",
  "yes",
  "zcat",
];

const APPLET_NAME = /^[A-Za-z0-9_.+\-[\]]+$/;

/**
 * Reads the applet names out of a busybox binary. Busybox keeps them as one sorted, NUL-separated
 * list ("[", "[[", "acpid", ...) in its read-only data; this finds that list without running the binary
 * (which is for another architecture). Returns undefined if no plausible table is found.
 */
export function busyboxApplets(binary: Uint8Array): string[] | undefined {
  const buf = Buffer.from(binary.buffer, binary.byteOffset, binary.byteLength);
  const parseAt = (start: number): string[] => {
    const names: string[] = [];
    let s = start;
    for (;;) {
      const e = buf.indexOf(0, s);
      if (e <= s || e - s > 64) break;
      const name = buf.toString("latin1", s, e);
      if (!APPLET_NAME.test(name)) break;
      if (names.length > 0 && name <= (names[names.length - 1] ?? "")) break; // the table is sorted
      names.push(name);
      s = e + 1;
    }
    return names;
  };
  const plausible = (names: string[]): boolean => names.length >= 20 && names.includes("sh") && names.includes("ls");
  // The table starts with "[" on builds that have the test applet; otherwise try the first applet.
  for (const anchor of ["\0[\0", "\0acpid\0", "\0addgroup\0", "\0adduser\0", "\0ar\0", "\0arch\0", "\0ash\0"]) {
    let from = 0;
    for (;;) {
      const at = buf.indexOf(anchor, from, "latin1");
      if (at < 0) break;
      const names = parseAt(at + 1);
      if (plausible(names)) return names;
      from = at + 1;
    }
  }
  return undefined;
}

/**
 * The part of /init that, with root= on the kernel command line (root=/dev/vda, LABEL=..., UUID=...;
 * also rootfstype=, rootflags=, ro/rw, rootdelay=, init=), waits for the block device, mounts it at
 * /newroot, moves /proc, /sys and /dev there and switches root to its init. If that fails it says why
 * and /init carries on with the initramfs shell; without root= it does nothing.
 */
const ROOT_SWITCH = `# Root file system: with root= on the kernel command line, mount it and switch to it.
root=
rootfstype=ext4
rootflags=
rootmode=rw
rootdelay=5
rootinit=/sbin/init
set -f
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    root=*) root="\${arg#root=}" ;;
    rootfstype=*) rootfstype="\${arg#rootfstype=}" ;;
    rootflags=*) rootflags="\${arg#rootflags=}" ;;
    rootdelay=*) rootdelay="\${arg#rootdelay=}" ;;
    init=*) rootinit="\${arg#init=}" ;;
    ro) rootmode=ro ;;
    rw) rootmode=rw ;;
  esac
done
set +f
case "$rootdelay" in ''|*[!0-9]*) rootdelay=5 ;; esac

# Sets $rootdev and returns 0 once the block device for $root exists (virtio_blk probes asynchronously).
wait_root() {
  tries=$((rootdelay * 10))
  while :; do
    case "$root" in
      LABEL=*|UUID=*|PARTUUID=*) rootdev=$(findfs "$root" 2>/dev/null) || rootdev= ;;
      *) rootdev="$root" ;;
    esac
    [ -n "$rootdev" ] && [ -b "$rootdev" ] && return 0
    [ "$tries" -gt 0 ] || return 1
    [ "$tries" -ne $((rootdelay * 10)) ] || echo "yun: waiting up to \${rootdelay} s for $root"
    tries=$((tries - 1))
    usleep 100000
  done
}

# Mounts $root at /newroot; on failure sets $why and returns 1.
mount_root() {
  if ! wait_root; then
    why="no such block device (waited \${rootdelay} s)"
    return 1
  fi
  mkdir -p /newroot
  if ! why=$(mount -t "$rootfstype" -o "$rootmode\${rootflags:+,$rootflags}" "$rootdev" /newroot 2>&1); then
    why="\${why#mount: }"
    [ -n "$why" ] || why="mount failed"
    return 1
  fi
  if [ ! -e "/newroot$rootinit" ] && [ ! -L "/newroot$rootinit" ]; then
    why="it has no $rootinit"
    umount /newroot
    return 1
  fi
  return 0
}

if [ -n "$root" ]; then
  if mount_root; then
    echo "yun: mounted root $root ($rootdev, $rootfstype, $rootmode); switching to $rootinit"
    for d in proc sys dev; do
      [ -d "/newroot/$d" ] && mount --move "/$d" "/newroot/$d"
    done
    exec switch_root /newroot "$rootinit"
  fi
  echo "yun: cannot mount root $root: $why"
  echo "yun: staying in the initramfs"
fi
`;

/** The /init script. Modules are listed, one absolute path per line, in {@link MODULE_ORDER_FILE}. */
export function initScript(): string {
  return `#!/bin/sh
# /init of the Yun Debian initramfs, generated by "yun image pull".
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
export TERM="\${TERM:-linux}"
export PS1='\\w \\$ '
umask 022

mkdir -p /proc /sys /dev /run /tmp /root
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev || echo "yun: could not mount devtmpfs on /dev"
mkdir -p /dev/pts /dev/shm
mount -t devpts -o mode=620,ptmxmode=666 devpts /dev/pts 2>/dev/null
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr
hostname yun

# Kernel modules, dependencies first. A module that fails to load is reported and skipped.
failed=
load_modules() {
  [ -r "$1" ] || return 0
  while read -r mod; do
    case "$mod" in ''|'#'*) continue ;; esac
    if ! out=$(insmod "$mod" 2>&1); then
      case "$out" in
        *'File exists'*) ;;
        *) failed="$failed \${mod##*/}" ;;
      esac
    fi
  done < "$1"
}
load_modules ${MODULE_ORDER_FILE}
# A display's modules only when the machine has a virtio-gpu (device 16) or virtio-input (18): a
# VM without a display loads nothing more.
if cat /sys/bus/virtio/devices/*/device 2>/dev/null | grep -q -e 0x0010 -e 0x0012; then
  load_modules ${DISPLAY_MODULE_ORDER_FILE}
fi
# A share's (virtio-9p, device 9) likewise.
if cat /sys/bus/virtio/devices/*/device 2>/dev/null | grep -q -e 0x0009; then
  load_modules ${SHARE_MODULE_ORDER_FILE}
fi
[ -z "$failed" ] || echo "yun: failed to load modules:$failed"

${ROOT_SWITCH}
ip link set lo up 2>/dev/null

echo "${INIT_READY_MARKER}"

# As process 1 this shell must turn busybox poweroff/reboot/halt (which signal process 1) into the
# real thing. The console shell runs in the background so that the traps fire while it is running.
trap 'sync; poweroff -f' USR2
trap 'sync; reboot -f' TERM
trap 'sync; halt -f' USR1
cd /root
while :; do
  setsid cttyhack sh </dev/console >/dev/console 2>&1 &
  wait $!
  sleep 1
done
`;
}

/** udhcpc's event script: applies a DHCP lease with ip(8) and writes /etc/resolv.conf. */
export function udhcpcScript(): string {
  return `#!/bin/sh
# udhcpc event script, generated by "yun image pull".
case "$1" in
  deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/\${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then
      while ip route del default dev "$interface" 2>/dev/null; do :; done
      for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    fi
    : > /etc/resolv.conf
    [ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    ;;
esac
exit 0
`;
}

export interface InitramfsInput {
  /** The static busybox binary. */
  busybox: Uint8Array;
  kernelVersion: string;
  /** Modules in load order (from resolveModules). */
  modules: ResolvedModule[];
  /** Further modules, in load order, that /init loads only when the machine has a display. */
  displayModules?: ResolvedModule[];
  /** Further modules, in load order, that /init loads only when the machine has a virtio-9p device. */
  shareModules?: ResolvedModule[];
  /** The kernel package's modules.builtin, copied so modprobe knows built-ins. */
  modulesBuiltin?: string;
  /** Entry mtime (seconds); default 0 for reproducible archives. */
  mtime?: number;
}

export interface InitramfsResult {
  archive: Buffer;
  applets: string[];
  /** True if the applet list came from the binary, false if the fallback list was used. */
  appletsFromBinary: boolean;
  entries: number;
}

/** Builds the initramfs as an uncompressed newc cpio archive. */
export function buildInitramfs(input: InitramfsInput): InitramfsResult {
  const w = new CpioWriter({ mtime: input.mtime ?? 0 });
  w.dir("/");
  for (const d of ["bin", "dev", "etc", "lib", "mnt", "newroot", "proc", "run", "sys", "usr", "var"]) w.dir(d);
  w.dir("root", { mode: 0o700 });
  w.dir("tmp", { mode: 0o1777 });
  w.symlink("sbin", "bin");
  w.symlink("usr/bin", "../bin");
  w.symlink("usr/sbin", "../bin");
  w.symlink("var/run", "../run");
  w.dir("var/tmp", { mode: 0o1777 });

  // The kernel opens /dev/console before running /init, so it must exist in the archive.
  w.charDevice("dev/console", 5, 1, { mode: 0o600 });
  w.charDevice("dev/null", 1, 3, { mode: 0o666 });

  w.file("bin/busybox", input.busybox, { mode: 0o755 });
  const found = busyboxApplets(input.busybox);
  const applets = (found ?? [...FALLBACK_APPLETS]).filter(
    (a) => a !== "busybox" && a !== "linuxrc" && !a.includes("/"),
  );
  for (const a of applets) w.symlink(`bin/${a}`, "busybox");

  w.file("init", initScript(), { mode: 0o755 });
  w.file("etc/hostname", "yun\n");
  w.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
  w.file("etc/group", "root:x:0:\ntty:x:5:\n");
  w.file("etc/shells", "/bin/sh\n/bin/ash\n");
  w.file("etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tyun\n::1\tlocalhost\n");
  w.symlink("etc/mtab", "/proc/mounts");
  w.file("etc/udhcpc/default.script", udhcpcScript(), { mode: 0o755 });

  const modDir = `lib/modules/${input.kernelVersion}`;
  w.dir(modDir);
  const display = input.displayModules ?? [];
  const share = input.shareModules ?? [];
  const all = [...input.modules, ...display, ...share];
  for (const m of all) w.file(`${modDir}/${m.path}`, m.data, { mode: 0o644 });
  w.file(`${modDir}/modules.dep`, modulesDep(all));
  w.file(`${modDir}/modules.alias`, modulesAlias(all));
  w.file(`${modDir}/modules.order`, all.map((m) => m.path).join("\n") + (all.length > 0 ? "\n" : ""));
  if (input.modulesBuiltin !== undefined) w.file(`${modDir}/modules.builtin`, input.modulesBuiltin);
  w.file(
    MODULE_ORDER_FILE,
    `# Kernel modules in load order (dependencies first), read by /init.\n` +
      input.modules.map((m) => `/${modDir}/${m.path}\n`).join(""),
  );
  w.file(
    DISPLAY_MODULE_ORDER_FILE,
    `# The display's kernel modules in load order, loaded by /init when the machine has a display.\n` +
      display.map((m) => `/${modDir}/${m.path}\n`).join(""),
  );
  w.file(
    SHARE_MODULE_ORDER_FILE,
    `# A share's kernel modules in load order, loaded by /init when the machine has a virtio-9p device.\n` +
      share.map((m) => `/${modDir}/${m.path}\n`).join(""),
  );

  const entries = w.size;
  return { archive: w.finish(), applets, appletsFromBinary: found !== undefined, entries };
}
