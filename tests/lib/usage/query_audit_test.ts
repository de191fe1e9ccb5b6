/**
 * The usage analytics agree with the audit trail: the summary and every breakdown of
 * `GET /v1/usage` (and `/v1/keys/{id}/usage`) equal, to the nano-dollar, the billed rows the audit
 * export lists over the same period, with real traffic through the router.
 */
import assert from "node:assert/strict";
import { json, startRouter, type TestRouter } from "../../_helpers.ts";
import { type FakeAnthropic, startFakeAnthropic } from "../../_fakes/anthropic.ts";
import { parseUsd } from "../../../lib/money.ts";
import { outboxKey } from "../../../lib/kv/schema.ts";
import type { UsageEvent } from "../../../lib/billing/types.ts";
import { newId } from "../../../lib/ids.ts";
import { recordEvents } from "../../../lib/audit/recorder.ts";
import { compactAccount } from "../../../lib/usage/compact.ts";
import { queryUsage as queryRows, type UsageQuery } from "../../../lib/usage/query.ts";
import { usageJson } from "../../../lib/http/presenters.ts";
import { distinctEvent } from "../../_fixtures.ts";
import { parseCsv } from "../../_csv.ts";

/** The usage query as GET /v1/usage answers it. */
const queryUsage = async (kv: Deno.Kv, q: UsageQuery) => usageJson(await queryRows(kv, q));

// Test clocks run ahead of the real one (see tests/lib/billing/periods_limits_test.ts).
const T0 = Date.parse("2032-01-05T21:10:00Z");
const DAY = 86_400_000;
/** API.md's audit columns: the CSV header. */
const CSV_HEADER =
  "timestamp,request_id,key_id,key_name,provider,model,prompt_tokens,completion_tokens,cached_tokens,cache_write_tokens,reasoning_tokens,cost,market_cost,latency_ms,status,streaming,client_ip,user_agent";

type AuditRowJson = Record<string, string | number | boolean | null>;
type UsageRow = Record<string, string | number>;

const COUNTS = [
  "prompt_tokens",
  "completion_tokens",
  "cached_tokens",
  "cache_write_tokens",
  "reasoning_tokens",
] as const;

interface Sums {
  requests: number;
  counts: Record<string, number>;
  cost: bigint;
  market_cost: bigint;
}
const emptySums = (): Sums => ({
  requests: 0,
  counts: Object.fromEntries(COUNTS.map((c) => [c, 0])),
  cost: 0n,
  market_cost: 0n,
});

/** The usage figures of audit rows: billed rows (a provider answered, status 200) counted. */
function sumsOf(rows: AuditRowJson[]): Sums {
  const s = emptySums();
  for (const r of rows) {
    s.cost += parseUsd(r.cost as string)!;
    s.market_cost += parseUsd(r.market_cost as string)!;
    if (r.status !== 200) {
      assert.equal(r.cost, "0", `${r.request_id}: a refusal or failure is at cost 0`);
      continue;
    }
    s.requests++;
    for (const c of COUNTS) s.counts[c] += r[c] as number;
  }
  return s;
}

function assertSame(row: UsageRow, s: Sums, what: string) {
  assert.equal(row.requests, s.requests, `${what}: requests`);
  for (const c of COUNTS) assert.equal(row[c], s.counts[c], `${what}: ${c}`);
  assert.equal(parseUsd(row.cost as string), s.cost, `${what}: cost`);
  assert.equal(parseUsd(row.market_cost as string), s.market_cost, `${what}: market_cost`);
}

function groupRows(rows: AuditRowJson[], by: (r: AuditRowJson) => string) {
  const m = new Map<string, AuditRowJson[]>();
  for (const r of rows) {
    const g = by(r);
    m.get(g)?.push(r) ?? m.set(g, [r]);
  }
  return m;
}

/** Asserts a usage breakdown equals the audit rows grouped alike (groups without billed rows may be absent). */
function assertBreakdown(breakdown: UsageRow[], groups: Map<string, AuditRowJson[]>, what: string) {
  const byGroup = new Map(breakdown.map((b) => [b.group as string, b]));
  for (const [g, rows] of groups) {
    const s = sumsOf(rows);
    const b = byGroup.get(g);
    if (!b) {
      assert.equal(s.requests, 0, `${what}: group ${g} missing`);
      continue;
    }
    assertSame(b, s, `${what} ${g}`);
  }
  for (const b of breakdown) {
    if (!groups.has(b.group as string)) {
      assert.equal(b.requests, 0, `${what}: group ${b.group} has no audit rows`);
      assert.equal(b.cost, "0");
    }
  }
}

async function exportJson(t: TestRouter, mgmt: string, q: string): Promise<AuditRowJson[]> {
  const res = await t.call(mgmt, "GET", `/v1/audit/export?format=json&${q}`);
  assert.equal(res.status, 200);
  return JSON.parse(await res.text());
}

/**
 * Asserts each audit filter, with the period, exports exactly the period's rows that match it, in
 * CSV (API.md's header, then each row as its JSON twin's fields) and in JSON.
 */
async function assertFilters(t: TestRouter, mgmt: string, q: string, rows: AuditRowJson[]) {
  const filters: [string, (r: AuditRowJson) => boolean][] = [
    ["provider=anthropic", (r) => r.provider === "anthropic"],
    ["model=gpt-4o-mini", (r) => r.model === "gpt-4o-mini"],
    ["status=200", (r) => r.status === 200],
    ["status=502", (r) => r.status === 502],
    ["streaming=true", (r) => r.streaming === true],
    ["streaming=false&provider=openai", (r) => r.streaming === false && r.provider === "openai"],
  ];
  for (const [f, keep] of filters) {
    const want = rows.filter(keep);
    assert.deepEqual(await exportJson(t, mgmt, `${q}&${f}`), want, `${q}&${f} (JSON)`);
    const res = await t.call(mgmt, "GET", `/v1/audit/export?format=csv&${q}&${f}`);
    const [header, ...lines] = parseCsv(await res.text());
    assert.equal(header.join(","), CSV_HEADER);
    assert.deepEqual(
      lines,
      want.map((r) => header.map((c) => String(r[c]))),
      `${q}&${f} (CSV)`,
    );
  }
}

/** Compares every grouping of the usage of [from, to) with the audit export of the same period. */
async function compare(t: TestRouter, mgmt: string, from: string, to: string, keyIds: string[]) {
  const q = `from=${from}&to=${to}`;
  const rows = await exportJson(t, mgmt, q);
  await assertFilters(t, mgmt, q, rows);
  const all = sumsOf(rows);
  for (const g of ["date", "key", "provider", "model"]) {
    const u = await json(await t.call(mgmt, "GET", `/v1/usage?${q}&group_by=${g}`), 200);
    assertSame(u.summary, all, `${q} ${g} summary`);
    if (g === "date") {
      // Hour rows for two days or less, else day rows.
      const hourly = u.interval === "hour";
      const label = (r: AuditRowJson) =>
        hourly
          ? (r.timestamp as string).slice(0, 13) + ":00:00Z"
          : (r.timestamp as string).slice(0, 10);
      assertBreakdown(u.breakdown, groupRows(rows, label), `${q} by date`);
    } else {
      assertBreakdown(
        u.breakdown,
        groupRows(rows, (r) => r[g === "key" ? "key_id" : g] as string),
        `${q} by ${g}`,
      );
    }
  }
  for (const keyId of keyIds) {
    const own = rows.filter((r) => r.key_id === keyId);
    const filtered = await exportJson(t, mgmt, `${q}&key_id=${keyId}`);
    assert.deepEqual(filtered, own, "the key_id filter of the export");
    for (const g of ["date", "key", "provider", "model"]) {
      const u = await json(
        await t.call(mgmt, "GET", `/v1/keys/${keyId}/usage?${q}&group_by=${g}`),
        200,
      );
      assertSame(u.summary, sumsOf(own), `${keyId} ${q} ${g} summary`);
      if (g === "provider" || g === "model") {
        assertBreakdown(u.breakdown, groupRows(own, (r) => r[g] as string), `${keyId} by ${g}`);
      }
    }
  }
  return rows;
}

async function chat(
  t: TestRouter,
  key: string,
  model: string,
  extra: Record<string, unknown> = {},
) {
  const res = await t.call(key, "POST", "/v1/chat/completions", {
    model,
    messages: [{ role: "user", content: "hello there" }],
    max_tokens: 40,
    ...extra,
  });
  const text = await res.text();
  return { status: res.status, text, id: res.headers.get("x-request-id")! };
}

Deno.test("usage = audit trail over day and hour cuts, renamed and revoked keys, refusals, fallbacks, a late event", async () => {
  let clock = T0;
  const anthropic: FakeAnthropic = startFakeAnthropic();
  const t = await startRouter({
    now: () => clock,
    env: {
      ANTHROPIC_API_KEY: "sk-ant-operator",
      ANTHROPIC_BASE_URL: anthropic.url,
    },
    providersFile: { retry: { max_retries: 1, backoff_ms: 1 } },
  });
  try {
    const { id: accountId, mgmt, key, keyId } = await t.account("20");
    const b = await json(await t.call(mgmt, "POST", "/v1/keys", { name: "key b" }), 201);
    const limited = await json(
      await t.call(mgmt, "POST", "/v1/keys", { name: "limited", credit_limit: "0.00001" }),
      201,
    );
    const slow = await json(
      await t.call(mgmt, "POST", "/v1/keys", { name: "slow", rate_limit_rpm: 1 }),
      201,
    );
    const models = [
      "openai/gpt-4o-mini",
      "gpt-4o-mini",
      "openai/gpt-4o",
      "anthropic/claude-haiku-4-5",
      "claude-haiku-4-5",
    ];
    for (let i = 0; i < 36; i++) {
      // Every 37 minutes: across hours and over the midnights of Jan 6 and 7.
      clock = T0 + i * 37 * 60_000 + (i % 5) * 1000;
      t.openai.scenario = {
        usage: {
          prompt_tokens: 100 + 13 * i,
          completion_tokens: 7 + i,
          prompt_tokens_details: { cached_tokens: i % 4 === 0 ? 32 : 0 },
          completion_tokens_details: { reasoning_tokens: i % 3 === 0 ? 3 : 0 },
        },
      };
      anthropic.scenario = { usage: { input_tokens: 50 + i, output_tokens: 9 + i } };
      const k = i % 3 === 0 && i <= 20 ? b.key : key;
      const r = await chat(t, k, models[i % models.length], i % 7 === 0 ? { stream: true } : {});
      assert.equal(r.status, 200, r.text);
      if (i % 6 === 1) {
        // A provider failure, then a fallback to another provider.
        t.openai.scenario = { status: 500 };
        assert.equal((await chat(t, key, "openai/gpt-4o-mini")).status, 502);
        const f = await chat(t, key, "openai/gpt-4o", { models: ["anthropic/claude-haiku-4-5"] });
        assert.equal(f.status, 200, f.text);
      }
      if (i % 6 === 2) {
        // Refusals: a key limit (402), a rate limit (429), an unknown model (404).
        t.openai.scenario = { usage: { prompt_tokens: 10, completion_tokens: 1 } };
        assert.equal(
          (await chat(t, limited.key, "openai/gpt-4o", { max_tokens: 4000 })).status,
          402,
        );
        await chat(t, slow.key, "openai/gpt-4o-mini");
        assert.equal((await chat(t, slow.key, "openai/gpt-4o-mini")).status, 429);
        assert.equal((await chat(t, key, "openai/no-such-model")).status, 404);
      }
      if (i === 20) {
        // Renamed and revoked after use.
        await json(await t.call(mgmt, "PATCH", `/v1/keys/${keyId}`, { name: "renamed" }), 200);
        await json(await t.call(mgmt, "DELETE", `/v1/keys/${b.id}`), 200);
      }
    }
    await t.router.flush();
    const keyIds = [keyId, b.id, limited.id, slow.id];

    const periods: [string, string][] = [
      ["2032-01-05", "2032-01-07"],
      ["2032-01-06", "2032-01-06"],
      ["2032-01-05T22:00:00Z", "2032-01-06T03:00:00Z"],
      ["2032-01-06T23:00:00Z", "2032-01-07T02:00:00Z"],
      ["2032-01-05T21:00:00Z", "2032-01-07T00:00:00Z"],
      ["2032-01-01", "2032-01-31"],
    ];
    // While the days are open (no digests), once they are closed and digested, and once their
    // month is closed too (month digests).
    for (const now of [clock, T0 + 10 * DAY, T0 + 60 * DAY]) {
      clock = now;
      for (const [from, to] of periods) await compare(t, mgmt, from, to, keyIds);
    }
    const rows = await exportJson(t, mgmt, "from=2032-01-01&to=2032-01-31");
    // Refusals, provider failures and failed attempts are in the audit trail (at cost 0).
    const statuses = new Set(rows.map((r) => r.status));
    for (const s of [200, 402, 404, 429, 502]) assert.ok(statuses.has(s), `a row with ${s}`);
    assert.ok(rows.some((r) => /\.\d+$/.test(r.request_id as string)), "an attempt's row");
    // A renamed key's rows keep the name it had when used; the breakdown groups by key id.
    const names = new Set(rows.filter((r) => r.key_id === keyId).map((r) => r.key_name));
    assert.deepEqual(names, new Set(["test key", "renamed"]));
    // The same model, named with and without its provider, is one group.
    const byModel = await json(
      await t.call(mgmt, "GET", "/v1/usage?from=2032-01-01&to=2032-01-31&group_by=model"),
      200,
    );
    assert.deepEqual(
      byModel.breakdown.map((r: UsageRow) => r.group),
      ["claude-haiku-4-5", "gpt-4o", "gpt-4o-mini"],
    );
    const byKey = await json(
      await t.call(mgmt, "GET", "/v1/usage?from=2032-01-01&to=2032-01-31&group_by=key"),
      200,
    );
    assert.deepEqual(
      byKey.breakdown.map((r: UsageRow) => r.group).sort(),
      [keyId, b.id, slow.id].sort(),
      "a revoked key is still listed",
    );

    // A period without rows: the header alone, an empty array, zero usage.
    const empty = "from=2031-12-01&to=2031-12-02T05:00:00Z";
    const csv = await t.call(mgmt, "GET", `/v1/audit/export?${empty}`);
    assert.equal(await csv.text(), CSV_HEADER + "\r\n");
    const arr = await t.call(mgmt, "GET", `/v1/audit/export?format=json&${empty}&key_id=${keyId}`);
    assert.equal(await arr.text(), "[]");
    await compare(t, mgmt, "2031-12-01", "2031-12-02T05:00:00Z", keyIds);
    const none = await json(await t.call(mgmt, "GET", `/v1/usage?${empty}&group_by=model`), 200);
    assert.equal(none.summary.requests, 0);
    assert.deepEqual(none.breakdown, []);
    const monthDigests = await Array.fromAsync(
      t.kv.list({ prefix: ["rollup_digest", accountId, "m"] }),
    );
    assert.ok(monthDigests.length > 0, "January's month digests exist");
    // A late event: recorded after its (closed) day and month were digested.
    const late: UsageEvent = {
      id: newId("evt", clock),
      account_id: accountId,
      ts: Date.parse("2032-01-06T05:30:00Z"),
      request_id: "req_late",
      key_id: b.id,
      key_name: "key b",
      provider: "anthropic",
      model: "claude-haiku-4-5",
      prompt_tokens: 11,
      completion_tokens: 3,
      cached_tokens: 0,
      cache_write_tokens: 0,
      reasoning_tokens: 0,
      cost: 123_457n,
      market_cost: 150_001n,
      latency_ms: 3,
      status: 200,
      streaming: false,
      client_ip: "",
      user_agent: "",
      billed: true,
      balance_after: null,
      error_code: null,
    };
    await t.kv.set(outboxKey(late.id), late);
    await t.router.flush();
    for (const [from, to] of periods) await compare(t, mgmt, from, to, keyIds);
  } finally {
    await t.close();
    await anthropic.close();
  }
});

/**
 * A KV whose first range read of a rollup dimension (`dim`) first waits for `before`: another
 * process's compactor committing while a usage query is between its reads.
 */
function racingKv(kv: Deno.Kv, dim: string, before: () => Promise<void>): Deno.Kv {
  let fired = false;
  return new Proxy(kv, {
    get(target, prop) {
      if (prop === "list") {
        return (selector: Deno.KvListSelector, options?: Deno.KvListOptions) => {
          const start = "start" in selector ? selector.start : undefined;
          if (fired || start?.[0] !== "rollup" || start[4] !== dim) {
            return target.list(selector, options);
          }
          fired = true;
          return (async function* () {
            await before();
            yield* target.list(selector, options);
          })();
        };
      }
      const v = Reflect.get(target, prop, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

Deno.test("usage: a compactor committing during a query never makes the summary and breakdown disagree", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const acct = "acct_race";
    const at = Date.parse("2032-03-02T10:20:00Z");
    const ev = (ts: number, model: string, cost: bigint) =>
      distinctEvent({ account_id: acct, ts, key_id: "key_a", model, cost });
    const record = async (evs: UsageEvent[]) => {
      for (const e of evs) await kv.set(outboxKey(e.id), e);
      assert.equal(await recordEvents(kv, evs.map((e) => e.id)), evs.length);
    };
    await record([ev(at, "m1", 1000n), ev(at + 60_000, "m2", 2000n)]);
    for (
      const [groupBy, now] of [["model", at], ["key", at], ["provider", at + 3 * DAY]] as const
    ) {
      // Another process records and compacts one more event of the period while this query
      // is between its reads of the account's totals and of the grouping's dimension.
      const raced = racingKv(kv, groupBy, async () => {
        await record([ev(at + 120_000, "m3", 4000n)]);
        await compactAccount(kv, acct);
      });
      const r = await queryUsage(raced, {
        accountId: acct,
        fromMs: Date.parse("2032-03-02"),
        toMs: Date.parse("2032-03-03"),
        groupBy,
        now,
      });
      const sum = r.breakdown.reduce((a, b) => a + parseUsd(b.cost)!, 0n);
      assert.equal(sum, parseUsd(r.summary.cost), `${groupBy}: Σ breakdown = summary`);
      assert.equal(
        r.breakdown.reduce((a, b) => a + b.requests, 0),
        r.summary.requests,
        `${groupBy}: Σ requests = summary`,
      );
    }
  } finally {
    kv.close();
  }
});
