/**
 * Robustness at the edges: Deno KV's size limits, events the recorder cannot write as they are,
 * holds expiring under live streams, and first requests racing their own credit.
 */
import assert from "node:assert/strict";
import { json, startRouter, type TestRouter } from "../_helpers.ts";
import { AccountActors } from "../../lib/billing/actor.ts";
import { recordEvents } from "../../lib/audit/recorder.ts";
import { newId } from "../../lib/ids.ts";
import { holdKey, outboxKey } from "../../lib/kv/schema.ts";
import type { UsageEvent } from "../../lib/billing/types.ts";
import { usageEvent } from "../_fixtures.ts";

const COST = 192_000n;

/**
 * Settles one request per entry of `variants` through an actor of its own that records nothing
 * (as a process killed right after its settling commit would leave them): the events wait in the
 * outbox. Each variant overrides fields of its event.
 */
async function settledUnrecorded(t: TestRouter, variants: Partial<UsageEvent>[]) {
  const acct = await t.account("1");
  const key = (await t.router.svc.keys.resolve(acct.key))!;
  const actors = new AccountActors(t.kv, { delivery: "drainer" });
  const ids: string[] = [];
  for (const fields of variants) {
    const holdId = newId("hold");
    const r = await actors.submit(acct.id, {
      kind: "reserve",
      keyId: key.id,
      holdId,
      amount: 1_000_000n,
      ttlMs: 60_000,
    });
    assert.deepEqual(r, { ok: true });
    const event = usageEvent({
      account_id: acct.id,
      key_id: key.id,
      key_name: key.name,
      cost: COST,
      balance_after: null,
      ...fields,
    });
    await actors.submit(acct.id, { kind: "settle", keyId: key.id, holdId, cost: COST, event });
    ids.push(event.id);
  }
  return { ...acct, ids, actors };
}

async function outboxLeft(kv: Deno.Kv, ids: string[]) {
  return (await kv.getMany(ids.map((id) => outboxKey(id)))).filter((e) => e.value !== null)
    .length;
}

Deno.test("a refused request naming a model of 70,000 characters is answered 404 and audited, truncated", async () => {
  const t = await startRouter();
  try {
    const acct = await t.account("1");
    for (const model of ["openai/" + "m".repeat(70_000), "中".repeat(30_000)]) {
      const res = await t.call(acct.key, "POST", "/v1/chat/completions", {
        model,
        messages: [{ role: "user", content: "hi" }],
      });
      const body = await json(res, 404);
      assert.equal(body.error.code, "model_not_found");
    }
    await t.router.flush();
    const audit = await json(await t.call(acct.mgmt, "GET", "/v1/audit"), 200);
    assert.equal(audit.data.length, 2, "both refusals have their audit row");
    for (const row of audit.data) {
      assert.equal(row.status, 404);
      assert.ok(row.model.length <= 256, `model kept short: ${row.model.length}`);
    }
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("an event whose audit row is over KV's value limit is recorded truncated, and the events beside it are recorded", async () => {
  const t = await startRouter({ env: { OUTBOX_DELIVERY: "drainer" } });
  try {
    // 40,000 "é": 40 KB in the outbox entry (one byte each), 80 KB as the audit row's UTF-8.
    const { ids, mgmt } = await settledUnrecorded(t, [
      {},
      { user_agent: "é".repeat(40_000) },
      {},
      { client_ip: "é".repeat(40_000) },
      {},
    ]);
    assert.equal(await outboxLeft(t.kv, ids), 5);
    await recordEvents(t.kv, ids);
    assert.equal(await outboxLeft(t.kv, ids), 0, "every event recorded");
    const tx = await json(await t.call(mgmt, "GET", "/v1/transactions?type=usage_debit"), 200);
    assert.equal(tx.data.length, 5, "one debit per event");
    const audit = await json(await t.call(mgmt, "GET", "/v1/audit"), 200);
    assert.equal(audit.data.length, 5);
    for (const row of audit.data) {
      assert.ok(row.user_agent.length <= 512 && row.client_ip.length <= 64);
    }
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("an outbox entry no atomic can record is left alone: the sweep records the rest and releases expired holds", async () => {
  const t = await startRouter({ env: { OUTBOX_DELIVERY: "drainer" } });
  try {
    const { id, ids, keyId, actors } = await settledUnrecorded(t, [{}, {}, {}]);
    // A hold of a request that died with another process, already expired.
    const dead = newId("hold");
    assert.deepEqual(
      await actors.submit(id, { kind: "reserve", keyId, holdId: dead, amount: 5n, ttlMs: 1 }),
      { ok: true },
    );
    // An entry whose audit key is over KV's 2 KiB key limit: no atomic can record it. Its id sorts
    // before the others, and its account after: it is met first by the sweep, and its atomic
    // would carry the others.
    const poison = usageEvent({
      id: newId("evt", Date.now() - 60_000),
      account_id: "acct_" + "z".repeat(2100),
      balance_after: 1n,
    });
    await t.kv.set(outboxKey(poison.id), poison);
    await new Promise((r) => setTimeout(r, 5));
    const swept = await t.router.svc.background.sweep({ staleAfterMs: -1 });
    assert.equal(swept.recorded, 3, "the three real events are recorded");
    assert.equal(swept.expired, 1, "the dead request's hold is released");
    assert.equal(await outboxLeft(t.kv, ids), 0);
    assert.equal((await t.kv.get(holdKey(id, dead))).value, null);
    assert.ok((await t.kv.get(outboxKey(poison.id))).value, "the bad entry stays for a person");
    // A sweep with only the bad entry left ends too.
    assert.deepEqual(await t.router.svc.background.sweep({ staleAfterMs: -1 }), {
      recorded: 0,
      expired: 0,
    });
    await t.kv.delete(outboxKey(poison.id));
    await t.assertBooks();
  } finally {
    await t.close();
  }
});
