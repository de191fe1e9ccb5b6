import assert from "node:assert/strict";
import { newId } from "../../../lib/ids.ts";
import { json, startRouter, type TestRouter } from "../../_helpers.ts";
import { parseUsd } from "../../../lib/money.ts";

// Test clocks run ahead of the real one (see tests/lib/billing/periods_limits_test.ts).
const T0 = Date.parse("2030-03-01T10:15:00Z");

type Row = Record<string, number | string>;
const COUNTS = [
  "requests",
  "prompt_tokens",
  "completion_tokens",
  "cached_tokens",
  "cache_write_tokens",
  "reasoning_tokens",
];
const MONEY = ["cost", "market_cost", "savings"];

/** Asserts Σ breakdown = summary for every counter and amount; returns the response. */
async function usage(t: TestRouter, auth: string, path: string) {
  const r = await json(await t.call(auth, "GET", path), 200);
  for (const f of COUNTS) {
    assert.equal(
      r.breakdown.reduce((a: number, b: Row) => a + (b[f] as number), 0),
      r.summary[f],
      `${path}: Σ ${f}`,
    );
  }
  for (const f of MONEY) {
    assert.equal(
      r.breakdown.reduce((a: bigint, b: Row) => a + parseUsd(b[f] as string)!, 0n),
      parseUsd(r.summary[f]),
      `${path}: Σ ${f}`,
    );
  }
  return r;
}

/** Σ of the ledger's usage debits whose time lies in [from, to). */
async function ledgerSpend(t: TestRouter, mgmt: string, from: number, to: number) {
  let sum = 0n;
  let cursor: string | null = null;
  do {
    const page: { data: { amount: string; created_at: string }[]; next_cursor: string | null } =
      await json(
        await t.call(
          mgmt,
          "GET",
          `/v1/transactions?type=usage_debit&limit=1000${cursor ? `&cursor=${cursor}` : ""}`,
        ),
        200,
      );
    for (const e of page.data) {
      const at = Date.parse(e.created_at);
      if (at >= from && at < to) sum -= parseUsd(e.amount)!;
    }
    cursor = page.next_cursor;
  } while (cursor);
  return sum;
}

Deno.test("GET /v1/usage: any period and grouping agrees with the ledger to the nano-dollar", async () => {
  let clock = T0;
  const t = await startRouter({ now: () => clock });
  try {
    const { key, keyId, mgmt } = await t.account("5");
    const other = await json(
      await t.call(mgmt, "POST", "/v1/keys", { name: "second key" }),
      201,
    );
    // 30 requests, 5 hours apart over about 6 days, two keys, two models, varied usage.
    for (let i = 0; i < 30; i++) {
      clock = T0 + i * 5 * 3_600_000 + i * 61_000;
      t.openai.scenario = {
        usage: {
          prompt_tokens: 100 + 17 * i,
          completion_tokens: 10 + 3 * i,
          prompt_tokens_details: { cached_tokens: i % 4 === 0 ? 50 : 0 },
          completion_tokens_details: { reasoning_tokens: i % 3 === 0 ? 5 : 0 },
        },
      };
      const res = await t.call(i % 3 === 0 ? other.key : key, "POST", "/v1/chat/completions", {
        model: i % 2 ? "openai/gpt-4o" : "openai/gpt-4o-mini",
        messages: [{ role: "user", content: "hi" }],
        max_tokens: 100,
      });
      assert.equal(res.status, 200, await res.text());
    }
    clock = T0 + 10 * 86_400_000;
    await t.router.flush();

    const periods: [string, string][] = [
      ["2030-03-01", "2030-03-07"],
      ["2030-03-02T10:00:00Z", "2030-03-04T14:00:00Z"],
      ["2030-03-03T06:00:00Z", "2030-03-03T09:00:00Z"],
    ];
    for (const [from, to] of periods) {
      const fromMs = Date.parse(from);
      const toMs = /T/.test(to) ? Date.parse(to) : Date.parse(to) + 86_400_000;
      const ledger = await ledgerSpend(t, mgmt, fromMs, toMs);
      const q = `from=${from}&to=${to}`;
      const byDate = await usage(t, mgmt, `/v1/usage?${q}&group_by=date`);
      assert.equal(parseUsd(byDate.summary.cost), ledger, `${q}: usage = ledger`);
      for (const g of ["key", "provider", "model"]) {
        const r = await usage(t, mgmt, `/v1/usage?${q}&group_by=${g}`);
        assert.deepEqual(r.summary, byDate.summary);
      }
      // The keys' own usage adds up to the account's.
      let keysCost = 0n, keysRequests = 0;
      for (const id of [keyId, other.id]) {
        const d = await usage(t, mgmt, `/v1/keys/${id}/usage?${q}&group_by=date`);
        const m = await usage(t, mgmt, `/v1/keys/${id}/usage?${q}&group_by=model`);
        assert.deepEqual(m.summary, d.summary);
        keysCost += parseUsd(d.summary.cost)!;
        keysRequests += d.summary.requests;
      }
      assert.equal(keysCost, ledger);
      assert.equal(keysRequests, byDate.summary.requests);
    }

    // Hour rows for a short period, day, week and month rows for longer ones.
    const hours = await usage(t, mgmt, "/v1/usage?from=2030-03-02&to=2030-03-02");
    assert.equal(hours.interval, "hour");
    assert.equal(hours.breakdown.length, 24);
    assert.equal(hours.breakdown[0].group, "2030-03-02T00:00:00Z");
    const weeks = await usage(t, mgmt, "/v1/usage?from=2030-03-01&to=2030-03-10&interval=week");
    assert.deepEqual(weeks.breakdown.map((b: Row) => b.group), ["2030-02-25", "2030-03-04"]);
    const months = await usage(t, mgmt, "/v1/usage?from=2030-02-01&to=2030-03-31&interval=month");
    assert.deepEqual(months.breakdown.map((b: Row) => b.group), ["2030-02", "2030-03"]);
    assert.equal(months.summary.requests, 30);
    const s = months.summary;
    assert.equal(parseUsd(s.savings), parseUsd(s.market_cost)! - parseUsd(s.cost)!);
    assert.equal(s.savings_percent, 20);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("GET /v1/usage: bad parameters are clear 400s", async () => {
  const t = await startRouter();
  try {
    const { mgmt, keyId } = await t.account("1");
    const bad: [string, string][] = [
      ["/v1/usage?from=last-week", "'from'"],
      ["/v1/usage?from=2026-11-02&to=2026-11-01", "'from'"],
      ["/v1/usage?group_by=colour", "'group_by'"],
      ["/v1/usage?interval=fortnight", "'interval'"],
      ["/v1/usage?group_by=key&interval=day", "'interval'"],
      ["/v1/usage?from=2026-01-01&to=2026-06-01&interval=hour", "'interval'"],
      [`/v1/keys/${keyId}/usage?to=2026-02-30T99:00`, "'to'"],
    ];
    for (const [path, field] of bad) {
      const body = await json(await t.call(mgmt, "GET", path), 400);
      assert.equal(body.error.code, "invalid_request");
      assert.ok(body.error.message.includes(field), `${path}: ${body.error.message}`);
    }
    await json(await t.call(mgmt, "GET", `/v1/keys/${newId("key")}/usage`), 404);
  } finally {
    await t.close();
  }
});
