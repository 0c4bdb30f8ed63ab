/**
 * Which execution engine the CPU-level tests run on: the interpreter by default, the translator
 * when YUN_TEST_ENGINE=jit (scripts/run-tests.js runs the CPU tests both ways). Under the
 * translator every block is translated the first time it runs (threshold 0), so the tests
 * exercise translated code, not the interpreter that feeds it.
 */
import type { Hart } from "../../src/cpu/hart.js";
import { Jit } from "../../src/cpu/jit.js";

export const TEST_ENGINE: "interp" | "jit" = process.env.YUN_TEST_ENGINE === "jit" ? "jit" : "interp";

export function withTestEngine(hart: Hart): Hart {
  if (TEST_ENGINE === "jit") new Jit(hart, { threshold: 0 });
  return hart;
}
