// The full Debian image's tests boot systemd on the software CPU: many minutes each,
// too long for `npm test` (CI's 45-minute budget). They run with `npm run test:full`,
// which sets YUN_TEST_FULL=1; a full image merely being present is not enough, so a
// machine that once built it runs the same `npm test` as a clean clone.

/** Why the full-image tests do not run in this run, or false when they were asked for. */
export function fullImageTestsOff(): string | false {
  return process.env.YUN_TEST_FULL === "1" ? false : "full-image tests run with npm run test:full (YUN_TEST_FULL=1)";
}
