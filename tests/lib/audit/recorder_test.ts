import assert from "node:assert/strict";
import { json, padding, startRouter, type TestRouter } from "../../_helpers.ts";
import { recordEvents } from "../../../lib/audit/recorder.ts";
import { outboxKey } from "../../../lib/kv/schema.ts";
import { settledUnrecorded } from "../../_fixtures.ts";

const COST = 192_000n;

/**
 * Settles `n` requests through a real account actor that delivers nothing by itself, so the
 * outbox entries wait for the deliveries the test makes.
 */
async function settled(t: TestRouter, n: number) {
  const { ids, actors: _actors, ...acct } = await settledUnrecorded(
    t,
    Array.from({ length: n }, () => ({
      prompt_tokens: 1000,
      completion_tokens: 200,
      cached_tokens: 400,
      reasoning_tokens: 50,
      market_cost: 240_000n,
      latency_ms: 5,
      client_ip: "127.0.0.1",
      user_agent: "test",
    })),
    COST,
  );
  const pending = await t.kv.getMany(ids.map((id) => outboxKey(id)));
  assert.ok(pending.every((e) => e.value !== null), "the events wait in the outbox");
  return { ...acct, ids };
}

/** Polls until none of `ids` is left in the outbox. */
async function recorded(t: TestRouter, ids: string[], deadlineMs = 10_000) {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const left = (await t.kv.getMany(ids.map((id) => outboxKey(id)))).filter((e) => e.value);
    if (left.length === 0) return;
    assert.ok(Date.now() < end, `${left.length} events still unrecorded`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Exactly one audit row and ledger row per event, rollups counted once, books balanced. */
async function assertOnce(t: TestRouter, mgmt: string, n: number) {
  await t.assertBooks();
  const audit = await json(await t.call(mgmt, "GET", "/v1/audit?limit=1000"), 200);
  assert.equal(audit.data.length, n, "one audit row per event");
  const tx = await json(await t.call(mgmt, "GET", "/v1/transactions?type=usage_debit"), 200);
  assert.equal(tx.data.length, n, "one ledger row per event");
  const usage = await json(await t.call(mgmt, "GET", "/v1/usage"), 200);
  assert.equal(usage.summary.requests, n);
  assert.equal(usage.summary.prompt_tokens, 1000 * n);
  assert.equal(usage.summary.cached_tokens, 400 * n);
  assert.equal(usage.summary.cost, String(Number(COST) * n / 1e9));
  const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
  assert.equal(credits.total_used, String(Number(COST) * n / 1e9));
}

Deno.test("recordEvents: twice, out of order and concurrently, each event records once", async () => {
  const t = await startRouter({ env: { OUTBOX_DELIVERY: "drainer" } });
  try {
    const { mgmt, ids } = await settled(t, 6);
    const [a, b, c, d, e, f] = ids;
    assert.equal(await recordEvents(t.kv, [c, a]), 2);
    assert.equal(await recordEvents(t.kv, [a, c]), 0, "a second delivery finds nothing to do");
    const counts = await Promise.all([
      recordEvents(t.kv, [f, e, d, b, a]),
      recordEvents(t.kv, [b, d, e, f]),
      recordEvents(t.kv, [e, b, c]),
      recordEvents(t.kv, ids),
    ]);
    assert.equal(counts.reduce((x, y) => x + y, 0), 4, "racing calls record each event once");
    assert.equal(await recordEvents(t.kv, [...ids, ...ids]), 0);
    await assertOnce(t, mgmt, 6);
  } finally {
    await t.close();
  }
});

Deno.test("queue delivery: a message delivered twice and out of order records once", async () => {
  const t = await startRouter({ env: { OUTBOX_DELIVERY: "queue" } });
  try {
    const { mgmt, ids } = await settled(t, 5);
    const [a, b, c, d, e] = ids;
    // Duplicate and reordered messages, raced by a direct call and a sweep.
    await t.kv.enqueue({ outbox: [e, c] });
    await t.kv.enqueue({ outbox: [c, e] });
    await t.kv.enqueue({ outbox: [d, b, a] });
    await t.kv.enqueue({ outbox: ids });
    await Promise.all([
      recordEvents(t.kv, [a, b]),
      t.router.svc.background.sweep({ staleAfterMs: -1 }),
    ]);
    await recorded(t, ids);
    // A late redelivery, after everything was recorded, finds nothing to do.
    const late = await settled(t, 1);
    await t.kv.enqueue({ outbox: [...ids, ...late.ids] });
    await recorded(t, late.ids);
    await assertOnce(t, mgmt, 5);
    await assertOnce(t, late.mgmt, 1);
  } finally {
    await t.close();
  }
});

Deno.test("drainer delivery (OUTBOX_DELIVERY=drainer): notified twice, swept and raced, records once", async () => {
  const t = await startRouter({ env: { OUTBOX_DELIVERY: "drainer" } });
  try {
    assert.equal(t.router.svc.config.outboxDelivery, "drainer");
    const { mgmt, ids } = await settled(t, 5);
    const bg = t.router.svc.background;
    bg.notify([...ids].reverse());
    bg.notify(ids);
    await Promise.all([
      bg.sweep({ staleAfterMs: -1 }),
      bg.sweep({ staleAfterMs: -1 }),
      recordEvents(t.kv, ids.slice(2)),
    ]);
    bg.notify(ids);
    await recorded(t, ids);
    await assertOnce(t, mgmt, 5);
  } finally {
    await t.close();
  }
});

Deno.test("requests through the router record once in both delivery modes", async () => {
  for (const mode of ["queue", "drainer"]) {
    const t = await startRouter({ env: { OUTBOX_DELIVERY: mode } });
    try {
      const { key, mgmt } = await t.account("1");
      t.openai.scenario = {
        usage: {
          prompt_tokens: 1000,
          completion_tokens: 200,
          prompt_tokens_details: { cached_tokens: 400 },
          completion_tokens_details: { reasoning_tokens: 50 },
        },
      };
      await Promise.all(Array.from({ length: 8 }, async () => {
        const res = await t.call(key, "POST", "/v1/chat/completions", {
          model: "gpt-4o-mini",
          ...padding(),
          messages: [{ role: "user", content: "hi" }],
        });
        await json(res, 200);
      }));
      await t.router.svc.background.sweep({ staleAfterMs: -1 });
      await assertOnce(t, mgmt, 8);
    } finally {
      await t.close();
    }
  }
});
