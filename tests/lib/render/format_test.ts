import assert from "node:assert/strict";
import { formatCount, formatMoney, formatPercent, formatTime } from "../../../lib/render/format.ts";
import { readPeriod } from "../../../lib/render/usage_view.tsx";

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

Deno.test("readPeriod: presets end today, custom dates are checked, edited dates win", () => {
  const now = Date.UTC(2026, 10, 26, 15);
  const q = (s: string) => readPeriod(new URLSearchParams(s), now);
  assert.deepEqual(q(""), { period: "30d", fromDay: "2026-10-28", toDay: "2026-11-26" });
  assert.deepEqual(q("period=7d"), { period: "7d", fromDay: "2026-11-20", toDay: "2026-11-26" });
  assert.deepEqual(q("period=custom&from=2026-11-01&to=2026-11-02"), {
    period: "custom",
    fromDay: "2026-11-01",
    toDay: "2026-11-02",
  });
  assert.ok(q("period=custom&from=2026-11-05&to=2026-11-02").error);
  // Dates GET /v1/usage refuses: not a calendar day, more than 1830 days, before 1970.
  for (const [from, to] of [["2026-02-30", "2026-03-05"], ["2000-01-01", "2026-11-26"]]) {
    assert.deepEqual(q(`period=custom&from=${from}&to=${to}`).fromDay, "2026-10-28");
    assert.ok(q(`period=custom&from=${from}&to=${to}`).error, `${from}..${to}`);
  }
  assert.ok(q("period=custom&from=0000-01-01&to=0000-01-02").error);
  assert.equal(q("period=30d&from=2026-11-01&to=2026-11-26").period, "custom");
  assert.equal(q("period=30d&from=2026-10-28&to=2026-11-26").period, "30d");
  // The form sends the dates it showed: a preset chosen over them means the preset.
  const shown = "from=2026-10-28&to=2026-11-26&shown_from=2026-10-28&shown_to=2026-11-26";
  assert.deepEqual(q(`period=7d&${shown}`), {
    period: "7d",
    fromDay: "2026-11-20",
    toDay: "2026-11-26",
  });
  assert.equal(
    q(`period=90d&${shown.replace("from=2026-10-28", "from=2026-10-01")}`).period,
    "custom",
  );
});
