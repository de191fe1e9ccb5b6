import assert from "node:assert/strict";
import { recordEvents } from "../../../lib/audit/recorder.ts";
import { outboxKey } from "../../../lib/kv/schema.ts";
import { parseUsd } from "../../../lib/money.ts";
import { queryUsage as queryRows, type UsageQuery } from "../../../lib/usage/query.ts";
import { periodBuckets } from "../../../lib/usage/period.ts";
import { usageJson } from "../../../lib/http/presenters.ts";
import { usageParams } from "../../../lib/http/params.ts";
import type { LedgerEntry, UsageEvent } from "../../../lib/billing/types.ts";
import { ApiError } from "../../../lib/http/errors.ts";
import { distinctEvent } from "../../_fixtures.ts";

/** The usage query as GET /v1/usage answers it. */
const queryUsage = async (kv: Deno.Kv, q: UsageQuery) => usageJson(await queryRows(kv, q));

const ACCT = "acct_test";
/** A billed usage event at `iso`, with distinct token and money figures per call. */
function event(iso: string, keyId: string, provider: string, model: string, cost: bigint) {
  return distinctEvent({
    account_id: ACCT,
    ts: Date.parse(iso),
    key_id: keyId,
    key_name: keyId,
    provider,
    model,
    cost,
  });
}

async function record(kv: Deno.Kv, events: UsageEvent[]) {
  for (const e of events) await kv.set(outboxKey(e.id), e);
  assert.equal(await recordEvents(kv, events.map((e) => e.id)), events.length);
}

async function ledgerDebits(kv: Deno.Kv, fromMs: number, toMs: number): Promise<bigint> {
  let sum = 0n;
  const it = kv.list<LedgerEntry>({ start: ["ledger", ACCT, fromMs], end: ["ledger", ACCT, toMs] });
  for await (const e of it) sum -= e.value.amount;
  return sum;
}

const ms = (iso: string) => Date.parse(iso);
const FAR_FUTURE = ms("2030-01-01T00:00:00Z");

/** Runs a query under every grouping and checks that each breakdown sums to the summary. */
async function allGroupings(kv: Deno.Kv, q: Omit<UsageQuery, "groupBy">) {
  const out: Record<string, Awaited<ReturnType<typeof queryUsage>>> = {};
  for (const groupBy of ["date", "key", "provider", "model"] as const) {
    const r = await queryUsage(kv, { ...q, groupBy });
    for (
      const f of [
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
      ] as const
    ) {
      assert.equal(
        r.breakdown.reduce((a, row) => a + row[f], 0),
        r.summary[f],
        `${groupBy}: Σ ${f} = summary`,
      );
    }
    for (const f of ["cost", "market_cost", "savings"] as const) {
      assert.equal(
        r.breakdown.reduce((a, row) => a + parseUsd(row[f])!, 0n),
        parseUsd(r.summary[f]),
        `${groupBy}: Σ ${f} = summary`,
      );
    }
    out[groupBy] = r;
  }
  return out;
}

Deno.test("usage: every breakdown sums to the summary and to the ledger, to the nano-dollar", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const events: UsageEvent[] = [];
    const keys = ["key_a", "key_b", "key_c"];
    const models: [string, string][] = [["openai", "gpt-4o-mini"], ["openai", "gpt-4o"], [
      "anthropic",
      "claude-sonnet-4-5",
    ]];
    for (let i = 0; i < 120; i++) {
      const t = ms("2026-10-01T00:00:00Z") + i * 7 * 3_600_000 + (i * 7919) % 3_600_000;
      const [p, m] = models[i % 3];
      events.push(
        event(
          new Date(t).toISOString(),
          keys[i % 3 === 0 ? 0 : i % 2 + 1],
          p,
          m,
          BigInt(1_000 + i * 37),
        ),
      );
    }
    await record(kv, events);
    const from = ms("2026-10-03T10:00:00Z"), to = ms("2026-10-30T14:00:00Z");
    const inPeriod = events.filter((e) => e.ts >= from && e.ts < to);
    const expectCost = inPeriod.reduce((a, e) => a + e.cost, 0n);
    assert.equal(await ledgerDebits(kv, from, to), expectCost);

    // Twice: first from scans (digests are built), then from the digests.
    for (let round = 0; round < 2; round++) {
      const r = await allGroupings(kv, {
        accountId: ACCT,
        fromMs: from,
        toMs: to,
        now: FAR_FUTURE,
      });
      assert.equal(r.date.summary.requests, inPeriod.length);
      assert.equal(parseUsd(r.date.summary.cost), expectCost);
      assert.equal(
        r.date.summary.prompt_tokens,
        inPeriod.reduce((a, e) => a + e.prompt_tokens, 0),
      );
      assert.deepEqual(r.key.summary, r.date.summary);
      assert.deepEqual(r.model.summary, r.date.summary);
      assert.deepEqual(r.model.breakdown.map((b) => b.group), [
        "claude-sonnet-4-5",
        "gpt-4o",
        "gpt-4o-mini",
      ]);
      const perProvider = Object.fromEntries(r.provider.breakdown.map((b) => [b.group, b.cost]));
      assert.equal(
        parseUsd(perProvider.anthropic),
        inPeriod.filter((e) => e.provider === "anthropic").reduce((a, e) => a + e.cost, 0n),
      );

      // One key: its breakdowns sum to its own total, which matches its events.
      const kr = await allGroupings(kv, {
        accountId: ACCT,
        keyId: "key_b",
        fromMs: from,
        toMs: to,
        now: FAR_FUTURE,
      });
      const mine = inPeriod.filter((e) => e.key_id === "key_b");
      assert.equal(kr.date.summary.requests, mine.length);
      assert.equal(parseUsd(kr.model.summary.cost), mine.reduce((a, e) => a + e.cost, 0n));
      assert.deepEqual(kr.key.breakdown.map((b) => b.group), ["key_b"]);
    }

    let digests = 0;
    for await (const _ of kv.list({ prefix: ["rollup_digest", ACCT] })) digests++;
    assert.ok(digests > 20, "closed buckets were digested");

    // A late event in an old (digested) bucket is counted: the digest is checked, not trusted.
    const late = event("2026-10-10T05:30:00Z", "key_a", "openai", "gpt-4o", 777n);
    await record(kv, [late]);
    const r = await queryUsage(kv, {
      accountId: ACCT,
      groupBy: "model",
      fromMs: from,
      toMs: to,
      now: FAR_FUTURE,
    });
    assert.equal(parseUsd(r.summary.cost), expectCost + 777n);
    assert.equal(
      parseUsd(r.breakdown.find((b) => b.group === "gpt-4o")!.cost),
      inPeriod.filter((e) => e.model === "gpt-4o").reduce((a, e) => a + e.cost, 0n) + 777n,
    );
  } finally {
    kv.close();
  }
});

Deno.test("usage: hour, day, week and month boundaries are UTC, edges exact to the hour", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const at = (iso: string, cost: bigint) => event(iso, "key_a", "openai", "gpt-4o", cost);
    await record(kv, [
      at("2026-11-01T23:59:59.999Z", 1n), // Sunday, last ms of the week and of October's...
      at("2026-10-31T23:59:59.999Z", 2n), // ...last ms of October (a Saturday)
      at("2026-11-01T00:00:00.000Z", 4n), // first ms of November
      at("2026-11-02T00:00:00.000Z", 8n), // Monday: a new week
      at("2026-11-02T09:59:59.999Z", 16n),
      at("2026-11-02T10:00:00.000Z", 32n),
      at("2026-11-02T13:59:59.999Z", 64n),
      at("2026-11-02T14:00:00.000Z", 128n),
    ]);
    const cost = async (from: string, to: string) =>
      parseUsd(
        (await queryUsage(kv, { accountId: ACCT, fromMs: ms(from), toMs: ms(to), now: FAR_FUTURE }))
          .summary.cost,
      );
    assert.equal(await cost("2026-11-02T10:00:00Z", "2026-11-02T14:00:00Z"), 96n);
    assert.equal(await cost("2026-10-31T00:00:00Z", "2026-11-01T00:00:00Z"), 2n);
    assert.equal(await cost("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"), 5n);
    assert.equal(await cost("2026-10-01T23:00:00Z", "2026-11-02T10:00:00Z"), 31n);

    const rows = async (interval: "hour" | "day" | "week" | "month", from: string, to: string) =>
      Object.fromEntries(
        (await queryUsage(kv, {
          accountId: ACCT,
          groupBy: "date",
          interval,
          fromMs: ms(from),
          toMs: ms(to),
          now: FAR_FUTURE,
        })).breakdown.map((b) => [b.group, parseUsd(b.cost)]),
      );
    assert.deepEqual(await rows("month", "2026-10-15", "2026-11-15"), {
      "2026-10": 2n,
      "2026-11": 253n,
    });
    assert.deepEqual(await rows("week", "2026-10-26", "2026-11-09"), {
      "2026-10-26": 7n,
      "2026-11-02": 248n,
    });
    const days = await rows("day", "2026-10-31T12:00:00Z", "2026-11-03T00:00:00Z");
    assert.deepEqual(days, { "2026-10-31": 2n, "2026-11-01": 5n, "2026-11-02": 248n });
    const hours = await rows("hour", "2026-11-02T09:00:00Z", "2026-11-02T15:00:00Z");
    assert.deepEqual(hours, {
      "2026-11-02T09:00:00Z": 16n,
      "2026-11-02T10:00:00Z": 32n,
      "2026-11-02T11:00:00Z": 0n,
      "2026-11-02T12:00:00Z": 0n,
      "2026-11-02T13:00:00Z": 64n,
      "2026-11-02T14:00:00Z": 128n,
    });
    // Two days or less: hour rows by default.
    const short = await queryUsage(kv, {
      accountId: ACCT,
      fromMs: ms("2026-11-01"),
      toMs: ms("2026-11-03"),
      now: FAR_FUTURE,
    });
    assert.equal(short.interval, "hour");
    assert.equal(short.breakdown.length, 48);
  } finally {
    kv.close();
  }
});

Deno.test("usage: a period splits into ragged hours and whole days", () => {
  const b = periodBuckets(ms("2026-11-01T22:00:00Z"), ms("2026-11-04T02:00:00Z"), false);
  assert.deepEqual(b.map((x) => x.name), [
    "2026-11-01T22",
    "2026-11-01T23",
    "2026-11-02",
    "2026-11-03",
    "2026-11-04T00",
    "2026-11-04T01",
  ]);
});

Deno.test("usage parameters: dates, times widened to the hour, clear 400s", () => {
  const now = ms("2026-11-26T13:45:00Z");
  const p = (q: Record<string, string>) => usageParams((n) => q[n], now);
  assert.deepEqual(p({}), {
    fromMs: ms("2026-10-28"),
    toMs: ms("2026-11-27"),
    groupBy: undefined,
    interval: undefined,
  });
  const d = p({ from: "2026-11-01", to: "2026-11-01" });
  assert.equal(d.toMs - d.fromMs, 86_400_000, "a date `to` includes that day");
  const t = p({ from: "2026-11-01T10:30:00Z", to: "2026-11-01T13:10:00Z" });
  assert.equal(t.fromMs, ms("2026-11-01T10:00:00Z"));
  assert.equal(t.toMs, ms("2026-11-01T14:00:00Z"));
  const bad: [Record<string, string>, RegExp][] = [
    [{ from: "yesterday" }, /'from'/],
    [{ to: "2026-13-45" }, /'to'/],
    [{ from: "2026-11-02", to: "2026-11-01" }, /'from': must be before 'to'/],
    [{ group_by: "color" }, /'group_by'/],
    [{ interval: "year" }, /'interval'/],
    [{ group_by: "model", interval: "day" }, /only to group_by=date/],
    [{ from: "2026-01-01", to: "2026-11-01", interval: "hour" }, /hour rows/],
    [{ from: "2000-01-01", to: "2026-11-01" }, /at most/],
  ];
  for (const [q, re] of bad) {
    assert.throws(() => p(q), (e: unknown) =>
      e instanceof ApiError && e.status === 400 &&
      re.test(e.message));
  }
});

Deno.test("usage: whole months come from month digests, which a late event invalidates", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const events: UsageEvent[] = [];
    for (let i = 0; i < 80; i++) {
      const t = ms("2026-08-20T00:00:00Z") + i * 29 * 3_600_000;
      events.push(
        event(new Date(t).toISOString(), `key_${i % 4}`, "openai", `m${i % 5}`, BigInt(100 + i)),
      );
    }
    await record(kv, events);
    const q = {
      accountId: ACCT,
      fromMs: ms("2026-08-25"),
      toMs: ms("2026-11-02"),
      now: FAR_FUTURE,
    };
    const inPeriod = events.filter((e) => e.ts >= q.fromMs && e.ts < q.toMs);
    const first = await allGroupings(kv, q);
    let months = 0;
    for await (const _ of kv.list({ prefix: ["rollup_digest", ACCT, "m"] })) months++;
    assert.ok(months >= 6, "September and October digested per grouping");
    const again = await allGroupings(kv, q);
    assert.deepEqual(again, first);
    assert.equal(parseUsd(first.model.summary.cost), inPeriod.reduce((a, e) => a + e.cost, 0n));
    const kq = { ...q, keyId: "key_1", groupBy: "model" as const };
    const k1 = await queryUsage(kv, kq);
    assert.equal(
      parseUsd(k1.summary.cost),
      inPeriod.filter((e) => e.key_id === "key_1").reduce((a, e) => a + e.cost, 0n),
    );

    await record(kv, [event("2026-09-15T12:00:00Z", "key_1", "openai", "m9", 5000n)]);
    const after = await allGroupings(kv, q);
    assert.equal(parseUsd(after.key.summary.cost), parseUsd(first.key.summary.cost)! + 5000n);
    assert.equal(parseUsd(after.model.breakdown.find((b) => b.group === "m9")!.cost), 5000n);
    const k1After = await queryUsage(kv, kq);
    assert.equal(parseUsd(k1After.summary.cost), parseUsd(k1.summary.cost)! + 5000n);
  } finally {
    kv.close();
  }
});
