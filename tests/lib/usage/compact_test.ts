import assert from "node:assert/strict";
import { json, startRouter } from "../../_helpers.ts";
import { recordEvents } from "../../../lib/audit/recorder.ts";
import {
  compactAccount,
  compactPending,
  PendingRollups,
  type PendingRow,
} from "../../../lib/usage/compact.ts";
import { queryUsage as queryRows, type UsageQuery } from "../../../lib/usage/query.ts";
import { usageJson } from "../../../lib/http/presenters.ts";
import { addRollupSums } from "../../../lib/usage/rollups.ts";
import { OUTBOX_PREFIX, outboxKey, ROLLUP_PENDING_PREFIX } from "../../../lib/kv/schema.ts";
import { keyString } from "../../../lib/kv/util.ts";
import { parseUsd } from "../../../lib/money.ts";
import type { UsageEvent } from "../../../lib/billing/types.ts";
import { distinctEvent } from "../../_fixtures.ts";

/** The usage query as GET /v1/usage answers it. */
const queryUsage = async (kv: Deno.Kv, q: UsageQuery) => usageJson(await queryRows(kv, q));

/** A billed (or refused) event with distinct figures per call. */
function event(account: string, ms: number, keyId: string, model: string, billed = true) {
  return distinctEvent({
    account_id: account,
    ts: ms,
    key_id: keyId,
    key_name: keyId,
    model,
    billed,
    ...(billed ? {} : { balance_after: null }),
  });
}

const H = 3_600_000;
const T0 = Date.parse("2026-09-14T22:10:00Z");

/** Events of `accounts` accounts over a few hours (across a day boundary), keys and models. */
function events(accounts: number, n: number): UsageEvent[] {
  return Array.from({ length: n }, (_, i) =>
    event(
      `acct_${i % accounts}`,
      T0 + (i % 5) * H + i * 1000,
      `key_${i % 3}`,
      `m${i % 4}`,
      i % 11 !== 5,
    ));
}

/** Puts events in the outbox and records them in deliveries of `size` (many pending entries). */
async function record(kv: Deno.Kv, evs: UsageEvent[], size = 7) {
  for (const e of evs) await kv.set(outboxKey(e.id), e);
  let n = 0;
  for (let i = 0; i < evs.length; i += size) {
    n += await recordEvents(kv, evs.slice(i, i + size).map((e) => e.id));
  }
  assert.equal(n, evs.length);
}

/** What the direct `sum` path wrote: every counter of the billed events, merged. */
function reference(evs: UsageEvent[]): Map<string, bigint> {
  const sums = new Map<string, [Deno.KvKey, bigint]>();
  for (const e of evs) if (e.billed) addRollupSums(sums, e);
  return new Map([...sums.values()].map(([k, v]) => [keyString(k), v]));
}

async function counters(kv: Deno.Kv): Promise<Map<string, bigint>> {
  const out = new Map<string, bigint>();
  for await (const e of kv.list<Deno.KvU64>({ prefix: ["rollup"] })) {
    out.set(keyString(e.key), e.value.value);
  }
  return out;
}

const pendingCount = async (kv: Deno.Kv) =>
  (await Array.fromAsync(kv.list({ prefix: ROLLUP_PENDING_PREFIX }))).length;

Deno.test("compaction: racing compactors fold each pending entry once, counters = direct sums", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const evs = events(1, 120);
    await record(kv, evs);
    const pending = await pendingCount(kv);
    assert.ok(pending >= 17, `one entry per delivery (${pending})`);
    assert.equal((await counters(kv)).size, 0, "recording writes no counter");

    const folded = await Promise.all([
      compactAccount(kv, "acct_0"),
      compactAccount(kv, "acct_0"),
      compactAccount(kv, "acct_0"),
    ]);
    assert.equal(folded.reduce((a, b) => a + b, 0), pending, "each entry folded exactly once");
    assert.equal(await pendingCount(kv), 0);
    assert.deepEqual(await counters(kv), reference(evs));
    assert.equal(await compactAccount(kv, "acct_0"), 0, "nothing left to fold");
  } finally {
    kv.close();
  }
});

Deno.test("compaction: many accounts, scanned and noted compactors racing", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const evs = events(37, 400);
    await record(kv, evs, 32);
    const pending = await pendingCount(kv);
    const folded = await Promise.all([
      compactPending(kv, { scan: true }),
      compactPending(kv, { scan: true }),
      compactPending(kv),
      compactAccount(kv, "acct_3"),
    ]);
    assert.equal(folded.reduce((a, b) => a + b, 0), pending);
    assert.equal(await pendingCount(kv), 0);
    assert.deepEqual(await counters(kv), reference(evs));
  } finally {
    kv.close();
  }
});

Deno.test("compaction: an entry too large for one atomic is split, then folded exactly", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    // 120 keys, 2 models, one hour: one entry of 120 rows, thousands of counters.
    const evs = Array.from(
      { length: 120 },
      (_, i) => event("acct_big", T0 + i, `key_${i}_${"k".repeat(30)}`, `model-${i % 2}`),
    );
    const rollups = new PendingRollups();
    for (const e of evs) rollups.add(e);
    const atomic = kv.atomic();
    assert.deepEqual(rollups.write(atomic), ["acct_big"]);
    await atomic.commit();
    const [entry] = await Array.fromAsync(kv.list<PendingRow[]>({ prefix: ROLLUP_PENDING_PREFIX }));
    assert.equal(entry.value.length, 120);

    await Promise.all([compactAccount(kv, "acct_big"), compactAccount(kv, "acct_big")]);
    assert.equal(await pendingCount(kv), 0);
    assert.deepEqual(await counters(kv), reference(evs));
  } finally {
    kv.close();
  }
});

Deno.test("compaction: a usage query sees every recorded event; a late one refreshes a digest", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const evs = events(1, 40);
    await record(kv, evs);
    assert.ok(await pendingCount(kv) > 0);
    const q = {
      accountId: "acct_0",
      fromMs: Date.parse("2026-09-14"),
      toMs: Date.parse("2026-09-16"),
      groupBy: "model" as const,
      now: Date.parse("2027-01-01"),
    };
    const billed = evs.filter((e) => e.billed);
    const first = await queryUsage(kv, q);
    assert.equal(await pendingCount(kv), 0, "the query folded the pending entries");
    assert.equal(first.summary.requests, billed.length);
    assert.equal(parseUsd(first.summary.cost), billed.reduce((a, e) => a + e.cost, 0n));
    // The closed day buckets now have digests, versioned by their request counts.
    const digestKey = ["rollup_digest", "acct_0", "d", "", "model", "2026-09-14"];
    const before = await kv.get<{ v: bigint }>(digestKey);
    assert.ok(before.value, "the closed day was digested");

    const late = event("acct_0", Date.parse("2026-09-14T22:59:00Z"), "key_9", "m-late");
    await record(kv, [late]);
    const again = await queryUsage(kv, q);
    assert.equal(again.summary.requests, billed.length + 1);
    assert.equal(parseUsd(again.breakdown.find((b) => b.group === "m-late")!.cost), late.cost);
    const after = await kv.get<{ v: bigint; values: string[] }>(digestKey);
    assert.equal(after.value!.v, before.value.v + 1n, "the digest was rebuilt");
    assert.ok(after.value!.values.includes("m-late"));
    assert.deepEqual(await counters(kv), reference([...evs, late]));
  } finally {
    kv.close();
  }
});

Deno.test("compaction: the API counts every request right after recording, books balance", async () => {
  const t = await startRouter({ env: { OUTBOX_DELIVERY: "drainer" } });
  try {
    const { key, mgmt } = await t.account("5");
    const n = 6;
    for (let i = 0; i < n; i++) {
      const res = await t.call(key, "POST", "/v1/chat/completions", {
        model: "openai/gpt-4o-mini",
        messages: [{ role: "user", content: "hi" }],
        max_tokens: 50,
      });
      assert.equal(res.status, 200, await res.text());
    }
    // Recorded (out of the outbox), whether or not the background has compacted yet.
    for (
      let tries = 0;
      (await Array.fromAsync(t.kv.list({ prefix: OUTBOX_PREFIX }))).length;
      tries++
    ) {
      assert.ok(tries < 500, "the events are recorded");
      await new Promise((r) => setTimeout(r, 10));
    }
    const usage = await json(await t.call(mgmt, "GET", "/v1/usage"), 200);
    assert.equal(usage.summary.requests, n);
    const tx = await json(await t.call(mgmt, "GET", "/v1/transactions?type=usage_debit"), 200);
    const spent = tx.data.reduce((a: bigint, e: { amount: string }) => a - parseUsd(e.amount)!, 0n);
    assert.equal(parseUsd(usage.summary.cost), spent, "usage = ledger to the nano-dollar");
    await t.assertBooks();
    assert.equal(await pendingCount(t.kv), 0, "flush leaves nothing pending");
  } finally {
    await t.close();
  }
});
