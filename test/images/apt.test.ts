import { test } from "node:test";
import assert from "node:assert/strict";
import {
  aptErrorLine,
  debFileName,
  discoverDebianMirror,
  parseControl,
  parseDeb822Sources,
  parseOneLineSources,
  pickDebianArchive,
  PrivateApt,
} from "../../src/images/apt.js";
import { dependsNames } from "../../src/images/tiny.js";

// Placeholder hosts under the reserved .invalid domain; nothing here touches the network.
const DEB822 = `Types: deb
# a comment inside the stanza
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
`;

const SECURITY_FIRST = `Types: deb deb-src
URIs: http://security.invalid/debian-security/
Suites: trixie-security
Components: main contrib

Types: deb-src
URIs: http://src-only.invalid/debian
Suites: trixie
Components: main

Enabled: no
Types: deb
URIs: http://disabled.invalid/debian
Suites: trixie
Components: main

Types: deb
URIs: https://archive.invalid/debian/
Suites: trixie trixie-updates
Components: main non-free-firmware
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mDMEZZZZZZ
 -----END PGP PUBLIC KEY BLOCK-----
`;

const UBUNTU = `Types: deb
URIs: http://ubuntu.invalid/ubuntu/
Suites: noble noble-updates noble-backports
Components: main restricted universe multiverse

Types: deb
URIs: http://ubuntu.invalid/ubuntu/
Suites: noble-security
Components: main restricted universe multiverse
`;

const ONE_LINE = `# deb cdrom:[Debian GNU/Linux 12]/ bookworm main
deb-src http://src.invalid/debian bookworm main
deb http://security.invalid/debian-security bookworm-security main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://one.invalid/debian/ bookworm main contrib # trailing comment
deb http://one.invalid/debian bookworm-updates main
`;

test("deb822: every stanza, continuation lines and comments", () => {
  const s = parseDeb822Sources(SECURITY_FIRST, "x.sources");
  assert.equal(s.length, 4);
  assert.deepEqual(s[0]!.types, ["deb", "deb-src"]);
  assert.deepEqual(s[0]!.suites, ["trixie-security"]);
  assert.equal(s[2]!.enabled, false);
  assert.deepEqual(s[3]!.uris, ["https://archive.invalid/debian/"]);
  assert.deepEqual(s[3]!.components, ["main", "non-free-firmware"]);
  assert.equal(s[3]!.origin, "x.sources");
  assert.equal(parseDeb822Sources(DEB822).length, 2);
});

test("deb822: picks the main archive, not security, deb-src or disabled", () => {
  assert.equal(pickDebianArchive(parseDeb822Sources(DEB822)), "http://mirror.invalid/debian");
  assert.equal(pickDebianArchive(parseDeb822Sources(SECURITY_FIRST)), "https://archive.invalid/debian");
});

test("an Ubuntu archive is not a Debian archive", () => {
  assert.equal(pickDebianArchive(parseDeb822Sources(UBUNTU)), undefined);
  assert.equal(pickDebianArchive(parseOneLineSources("deb http://ubuntu.invalid/ubuntu jammy main universe\n")), undefined);
});

test("one-line format: options, comments, deb-src and security skipped", () => {
  const s = parseOneLineSources(ONE_LINE);
  assert.equal(s.length, 4);
  assert.deepEqual(s[2]!.components, ["main", "contrib"]);
  assert.equal(pickDebianArchive(s), "http://one.invalid/debian");
});

test("a source with only -updates/-backports suites is a fallback", () => {
  const s = parseOneLineSources("deb http://bp.invalid/debian bookworm-backports main\ndeb http://main.invalid/debian sid main\n");
  assert.equal(pickDebianArchive(s), "http://main.invalid/debian");
  assert.equal(pickDebianArchive(s.slice(0, 1)), "http://bp.invalid/debian");
});

test("discovery: YUN_APT_MIRROR wins, then the first file with a Debian archive", () => {
  const files = [
    { path: "/etc/apt/sources.list", text: "# empty\n" },
    { path: "/etc/apt/sources.list.d/ubuntu.sources", text: UBUNTU },
    { path: "/etc/apt/sources.list.d/debian.sources", text: DEB822 },
  ];
  assert.deepEqual(discoverDebianMirror({ env: {}, files }), {
    uri: "http://mirror.invalid/debian",
    from: "/etc/apt/sources.list.d/debian.sources",
  });
  assert.deepEqual(discoverDebianMirror({ env: { YUN_APT_MIRROR: "http://override.invalid/debian/" }, files }), {
    uri: "http://override.invalid/debian",
    from: "YUN_APT_MIRROR",
  });
  assert.equal(discoverDebianMirror({ env: {}, files: files.slice(0, 2) }), undefined);
  assert.throws(() => discoverDebianMirror({ env: { YUN_APT_MIRROR: "not a uri" }, files }), /YUN_APT_MIRROR must be a URI/);
});

test("the private sources line uses signed-by when the keyring exists, else trusted=yes", () => {
  const signed = new PrivateApt({ stateDir: "/nonexistent", mirror: "http://m.invalid/debian", keyring: process.execPath });
  assert.equal(signed.sourceLine, `deb [arch=riscv64 signed-by=${process.execPath}] http://m.invalid/debian trixie main`);
  const unsigned = new PrivateApt({ stateDir: "/nonexistent", mirror: "http://m.invalid/debian", keyring: "/nonexistent/key.gpg" });
  assert.equal(unsigned.sourceLine, "deb [arch=riscv64 trusted=yes] http://m.invalid/debian trixie main");
});

test("apt's key error line is picked out of its output", () => {
  const unreachable = `Err:1 http://m.invalid/debian trixie InRelease
  Could not resolve 'm.invalid'
Reading package lists...
W: Failed to fetch http://m.invalid/debian/dists/trixie/InRelease  Could not resolve 'm.invalid'
W: Some index files failed to download. They have been ignored, or old ones used instead.
`;
  assert.equal(aptErrorLine(unreachable), "Could not resolve 'm.invalid'");
  const unsigned = `W: GPG error: http://m.invalid/debian trixie InRelease: The following signatures couldn't be verified because the public key is not available: NO_PUBKEY 0123
E: The repository 'http://m.invalid/debian trixie InRelease' is not signed.
`;
  assert.equal(aptErrorLine(unsigned), "The repository 'http://m.invalid/debian trixie InRelease' is not signed.");
  assert.equal(aptErrorLine("all good\n"), undefined);
});

test("control stanzas, Depends names and download file names", () => {
  const [s] = parseControl("Package: linux-image-riscv64\nVersion: 6.12.117-1\nDescription: Linux\n more text\n .\n end\n");
  assert.equal(s!.get("Version"), "6.12.117-1");
  assert.equal(s!.get("Description"), "Linux\nmore text\n.\nend");
  assert.deepEqual(dependsNames("linux-image-6.12.117+deb13-riscv64 (= 6.12.117-1), foo | bar:any (>= 1)"), [
    "linux-image-6.12.117+deb13-riscv64",
    "foo",
    "bar",
  ]);
  assert.equal(debFileName("busybox-static", "1:1.37.0-6+b9", "riscv64"), "busybox-static_1%3a1.37.0-6+b9_riscv64.deb");
});
