import assert from "node:assert/strict";
import { json, startRouter, type TestRouter } from "../../_helpers.ts";
import { parseCsv } from "../../_csv.ts";
import { parseUsd } from "../../../lib/money.ts";
import { statementCloseKey } from "../../../lib/kv/schema.ts";
import { monthRange, monthsBetween } from "../../../lib/billing/statements.ts";

interface StatementJson {
  month: string;
  opening_balance: string;
  purchases: string;
  usage: {
    total: string;
    by_model: {
      provider: string;
      model: string;
      requests: number;
      cost: string;
      market_cost: string;
    }[];
  };
  adjustments: string;
  refunds: string;
  closing_balance: string;
}

const usd = (s: string) => parseUsd(s)!;
const MARCH_END = Date.parse("2030-04-01T00:00:00Z");

/** A chat request billed at `clock`, its tokens varied by `i`. */
async function request(t: TestRouter, key: string, i: number) {
  t.openai.scenario = {
    usage: { prompt_tokens: 300 + 37 * i, completion_tokens: 20 + 11 * i },
  };
  const res = await t.call(key, "POST", "/v1/chat/completions", {
    model: i % 2 ? "openai/gpt-4o" : "openai/gpt-4o-mini",
    messages: [{ role: "user", content: "hi" }],
    max_tokens: 200,
  });
  assert.equal(res.status, 200, await res.text());
}

/** Every ledger row of the account (GET /v1/transactions), oldest first. */
async function ledger(t: TestRouter, mgmt: string) {
  const rows: { type: string; amount: string; created_at: string }[] = [];
  let cursor: string | null = null;
  do {
    const q: string = cursor ? `&cursor=${cursor}` : "";
    const page = await json(await t.call(mgmt, "GET", `/v1/transactions?limit=1000${q}`), 200);
    rows.push(...page.data);
    cursor = page.next_cursor;
  } while (cursor);
  return rows.reverse();
}

/** Asserts the statement adds up, and to the ledger rows of its month. */
async function assertReconciles(t: TestRouter, mgmt: string, s: StatementJson) {
  const [start, end] = monthRange(s.month)!;
  const rows = await ledger(t, mgmt);
  const before = rows.filter((r) => Date.parse(r.created_at) < start);
  const within = rows.filter((r) => {
    const at = Date.parse(r.created_at);
    return at >= start && at < end;
  });
  const sum = (list: { amount: string }[]) => list.reduce((n, r) => n + usd(r.amount), 0n);
  const ofType = (type: string) => sum(within.filter((r) => r.type === type));
  assert.equal(usd(s.opening_balance), sum(before), "opening = Σ ledger before the month");
  assert.equal(usd(s.purchases), ofType("purchase"));
  assert.equal(usd(s.adjustments), ofType("adjustment"));
  assert.equal(usd(s.refunds), ofType("refund"));
  assert.equal(usd(s.usage.total), ofType("usage_debit"));
  const lines = s.usage.by_model;
  assert.equal(lines.reduce((n, l) => n + usd(l.cost), 0n), usd(s.usage.total), "Σ lines");
  assert.equal(
    lines.reduce((n, l) => n + l.requests, 0),
    within.filter((r) => r.type === "usage_debit").length,
  );
  for (const l of lines) assert.ok(usd(l.market_cost) < usd(l.cost), "a debit below market");
  assert.equal(
    usd(s.closing_balance) - usd(s.opening_balance),
    usd(s.purchases) + usd(s.usage.total) + usd(s.adjustments) + usd(s.refunds),
  );
}

Deno.test("GET /v1/statements: across a month boundary each month reconciles to the ledger and its balances", async () => {
  let clock = Date.parse("2030-03-31T23:40:00Z");
  const t = await startRouter({ now: () => clock });
  try {
    const { id, key, mgmt } = await t.account("10");
    await json(
      await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: "starter" }),
      201,
    );
    for (let i = 0; i < 4; i++) {
      clock += 60_000;
      await request(t, key, i);
    }
    await json(
      await t.admin("POST", `/v1/admin/accounts/${id}/refunds`, { amount: "0.5", reason: "x" }),
      201,
    );
    // The last moment of March.
    clock = MARCH_END - 1;
    await request(t, key, 9);
    await t.router.flush();
    const marchEnd = (await json(await t.call(mgmt, "GET", "/v1/credits"), 200)).balance;

    clock = MARCH_END;
    await request(t, key, 5);
    for (let i = 6; i < 8; i++) {
      clock += 120_000;
      await request(t, key, i);
    }
    await json(
      await t.admin("POST", `/v1/admin/accounts/${id}/adjustments`, {
        amount: "-1.25",
        reason: "correction",
      }),
      201,
    );
    await json(await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: "team" }), 201);
    await t.router.flush();
    const now = (await json(await t.call(mgmt, "GET", "/v1/credits"), 200)).balance;

    const march: StatementJson = await json(
      await t.call(mgmt, "GET", "/v1/statements/2030-03"),
      200,
    );
    assert.deepEqual(Object.keys(march), [
      "month",
      "opening_balance",
      "purchases",
      "usage",
      "adjustments",
      "refunds",
      "closing_balance",
    ]);
    assert.equal(march.month, "2030-03");
    assert.equal(march.opening_balance, "0");
    assert.equal(march.purchases, "10");
    assert.equal(march.adjustments, "10");
    assert.equal(march.refunds, "0.5");
    assert.equal(march.closing_balance, marchEnd, "closing = the balance at the month's end");
    assert.deepEqual(
      march.usage.by_model.map((l) => [l.provider, l.model, l.requests]),
      [["openai", "gpt-4o", 3], ["openai", "gpt-4o-mini", 2]],
    );
    await assertReconciles(t, mgmt, march);

    const april: StatementJson = await json(
      await t.call(mgmt, "GET", "/v1/statements/2030-04?format=json"),
      200,
    );
    assert.equal(april.opening_balance, march.closing_balance);
    assert.equal(april.closing_balance, now);
    assert.equal(april.purchases, "25");
    assert.equal(april.adjustments, "-1.25");
    assert.equal(april.usage.by_model.reduce((n, l) => n + l.requests, 0), 3);
    await assertReconciles(t, mgmt, april);

    // Before the account: zeros. After this month: refused.
    const before = await json(await t.call(mgmt, "GET", "/v1/statements/2029-12"), 200);
    assert.deepEqual(before, {
      month: "2029-12",
      opening_balance: "0",
      purchases: "0",
      usage: { total: "0", by_model: [] },
      adjustments: "0",
      refunds: "0",
      closing_balance: "0",
    });
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("GET /v1/statements?format=csv: RFC 4180 rows section,provider,model,requests,amount with the JSON's figures", async () => {
  let clock = Date.parse("2030-03-10T12:00:00Z");
  const t = await startRouter({ now: () => clock });
  try {
    const { key, mgmt } = await t.account("3");
    for (let i = 0; i < 3; i++) {
      clock += 1000;
      await request(t, key, i);
    }
    await t.router.flush();
    const s: StatementJson = await json(await t.call(mgmt, "GET", "/v1/statements/2030-03"), 200);
    const res = await t.call(mgmt, "GET", "/v1/statements/2030-03?format=csv");
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "text/csv; charset=utf-8");
    assert.equal(
      res.headers.get("content-disposition"),
      'attachment; filename="statement-2030-03.csv"',
    );
    const rows = parseCsv(await res.text());
    const requests = s.usage.by_model.reduce((n, l) => n + l.requests, 0);
    assert.deepEqual(rows, [
      ["section", "provider", "model", "requests", "amount"],
      ["opening_balance", "", "", "", s.opening_balance],
      ["purchases", "", "", "", s.purchases],
      ...s.usage.by_model.map((l) => ["usage", l.provider, l.model, String(l.requests), l.cost]),
      ["usage_total", "", "", String(requests), s.usage.total],
      ["adjustments", "", "", "", s.adjustments],
      ["refunds", "", "", "", s.refunds],
      ["closing_balance", "", "", "", s.closing_balance],
    ]);
    assert.equal(s.adjustments, "3");
    assert.ok(usd(s.usage.total) < 0n);
  } finally {
    await t.close();
  }
});

Deno.test("GET /v1/statements refuses a malformed or future month and an unknown format, 400", async () => {
  const clock = Date.parse("2030-03-10T12:00:00Z");
  const t = await startRouter({ now: () => clock });
  try {
    const { mgmt, key } = await t.account("1");
    for (
      const month of ["2030-04", "2031-01", "2030-13", "2030-00", "2030-3", "30-03", "2030-03-01"]
    ) {
      const res = await json(await t.call(mgmt, "GET", `/v1/statements/${month}`), 400);
      assert.equal(res.error.code, "invalid_request", month);
      assert.match(res.error.message, /'month'/, month);
    }
    const format = await json(await t.call(mgmt, "GET", "/v1/statements/2030-03?format=xml"), 400);
    assert.match(format.error.message, /'format'/);
    await json(await t.call(mgmt, "GET", "/v1/statements/2030-03"), 200);
    await json(await t.call(key, "GET", "/v1/statements/2030-03"), 403);
  } finally {
    await t.close();
  }
});

Deno.test("statements: a closed month's closing balance is cached, and statements read the same after", async () => {
  let clock = Date.parse("2030-01-15T12:00:00Z");
  const t = await startRouter({ now: () => clock });
  try {
    const { id, key, mgmt } = await t.account("4");
    await request(t, key, 1);
    await t.router.flush();
    const get = async (m: string) =>
      await json(await t.call(mgmt, "GET", `/v1/statements/${m}`), 200);
    const cached = async (m: string) => (await t.kv.get(statementCloseKey(id, m))).value;

    // Still open, or closed less than a day ago: not cached.
    const janOpen = await get("2030-01");
    clock = Date.parse("2030-02-01T06:00:00Z");
    assert.deepEqual(await get("2030-01"), janOpen);
    assert.equal(await cached("2030-01"), null);
    clock = Date.parse("2030-02-10T12:00:00Z");
    await request(t, key, 2);
    await t.router.flush();

    clock = Date.parse("2030-03-05T00:00:00Z");
    const feb = await get("2030-02");
    assert.equal(await cached("2030-01"), usd(janOpen.closing_balance), "kept on the way");
    assert.equal(await cached("2030-02"), usd(feb.closing_balance));
    assert.deepEqual(await get("2030-01"), janOpen);
    assert.deepEqual(await get("2030-02"), feb);
    assert.equal((await get("2030-03")).opening_balance, feb.closing_balance);
    assert.equal(feb.opening_balance, janOpen.closing_balance);
    assert.equal(await cached("2029-12"), null, "no month before the first ledger row is kept");
    await assertReconciles(t, mgmt, feb);
  } finally {
    await t.close();
  }
});

Deno.test("monthRange and monthsBetween: UTC months, years below 100 too", () => {
  assert.deepEqual(monthRange("2030-02"), [
    Date.parse("2030-02-01T00:00:00Z"),
    Date.parse("2030-03-01T00:00:00Z"),
  ]);
  assert.deepEqual(monthRange("2030-12")![1], Date.parse("2031-01-01T00:00:00Z"));
  assert.equal(new Date(monthRange("0050-01")![0]).getUTCFullYear(), 50);
  assert.equal(monthRange("2030-13"), null);
  assert.deepEqual(
    monthsBetween(Date.parse("2029-11-20T00:00:00Z"), Date.parse("2030-02-03T00:00:00Z"), 36),
    ["2030-02", "2030-01", "2029-12", "2029-11"],
  );
  assert.equal(monthsBetween(0, Date.parse("2030-02-03T00:00:00Z"), 3).length, 3);
});
