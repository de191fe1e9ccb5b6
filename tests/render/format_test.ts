import assert from "node:assert/strict";
import { formatCount, formatMoney, formatPercent, formatTime } from "../../lib/render/format.ts";

Deno.test("formatMoney shows whole cents with two decimals and finer amounts exactly", () => {
  assert.equal(formatMoney("0"), "$0.00");
  assert.equal(formatMoney("10"), "$10.00");
  assert.equal(formatMoney("12.5"), "$12.50");
  assert.equal(formatMoney("1234567.89"), "$1,234,567.89");
  assert.equal(formatMoney("9.999424"), "$9.999424");
  assert.equal(formatMoney("0.000000001"), "$0.000000001");
  assert.equal(formatMoney("-0.000192"), "−$0.000192");
  assert.equal(formatMoney("not money"), "not money");
});

Deno.test("formatCount, formatPercent and formatTime read as people expect", () => {
  assert.equal(formatCount(1234567), "1,234,567");
  assert.equal(formatCount(0), "0");
  assert.equal(formatPercent(20), "20%");
  assert.equal(formatPercent(19.99), "19.99%");
  assert.equal(formatTime("2026-11-26T13:05:59.123Z"), "2026-11-26 13:05 UTC");
  assert.equal(formatTime(null), "—");
});
