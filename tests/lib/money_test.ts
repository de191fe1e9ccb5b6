import assert from "node:assert/strict";
import { divRound, formatUsd, parseUsd, savingsPercent, usdNumber } from "../../lib/money.ts";

Deno.test("parseUsd reads decimal strings exactly, to the nano-dollar", () => {
  assert.equal(parseUsd("12.5"), 12_500_000_000n);
  assert.equal(parseUsd("0.000150000"), 150_000n);
  assert.equal(parseUsd("0.000000001"), 1n);
  assert.equal(parseUsd("-0.000000001"), -1n);
  assert.equal(parseUsd("  7 "), 7_000_000_000n);
  assert.equal(parseUsd("999999999999999.999999999"), 999_999_999_999_999_999_999_999n);
  // 0.1 + 0.2 is exact here, unlike floating point.
  assert.equal(parseUsd("0.1")! + parseUsd("0.2")!, parseUsd("0.3"));
});

Deno.test("parseUsd refuses what is not a plain decimal", () => {
  for (
    const bad of [
      "",
      "-",
      ".5",
      "1.",
      "1e3",
      "+1",
      "1,5",
      "0x10",
      "NaN",
      "Infinity",
      "1.0000000001", // ten decimals: below a nano-dollar
      "1000000000000000", // sixteen whole digits
      "1 000",
      "--1",
    ]
  ) {
    assert.equal(parseUsd(bad), null, `"${bad}" must be refused`);
  }
});

Deno.test("formatUsd writes the shortest exact decimal and round-trips", () => {
  assert.equal(formatUsd(0n), "0");
  assert.equal(formatUsd(12_500_000_000n), "12.5");
  assert.equal(formatUsd(1n), "0.000000001");
  assert.equal(formatUsd(-1n), "-0.000000001");
  assert.equal(formatUsd(-12_000_000_000n), "-12");
  assert.equal(formatUsd(192_000n), "0.000192");
  assert.equal(formatUsd(10n ** 30n), "1000000000000000000000");
  for (const n of [0n, 1n, -1n, 999_999_999n, 1_000_000_001n, -123_456_789_012n]) {
    assert.equal(parseUsd(formatUsd(n)), n);
  }
});

Deno.test("usdNumber gives SDKs the nearest number of USD", () => {
  assert.equal(usdNumber(192_000n), 0.000192);
  assert.equal(usdNumber(1n), 1e-9);
  assert.equal(usdNumber(-2_500_000_000n), -2.5);
});

Deno.test("divRound rounds half away from zero, in every sign", () => {
  assert.equal(divRound(15n, 10n), 2n);
  assert.equal(divRound(14n, 10n), 1n);
  assert.equal(divRound(-15n, 10n), -2n);
  assert.equal(divRound(-14n, 10n), -1n);
  assert.equal(divRound(15n, -10n), -2n);
  assert.equal(divRound(-15n, -10n), 2n);
  assert.equal(divRound(20n, 10n), 2n);
  assert.equal(divRound(0n, 7n), 0n);
  assert.equal(divRound(1n, 3n), 0n);
  assert.equal(divRound(2n, 3n), 1n);
});

Deno.test("savingsPercent is a two-decimal percent, 0 without spend", () => {
  assert.equal(savingsPercent(80n, 100n), 20);
  assert.equal(savingsPercent(2n, 3n), 33.33);
  assert.equal(savingsPercent(0n, 0n), 0);
  assert.equal(savingsPercent(100n, 100n), 0);
});
