import assert from "node:assert/strict";
import { recordEvents } from "../../../lib/audit/recorder.ts";
import { newId } from "../../../lib/ids.ts";
import { auditIdKey, OUTBOX_PREFIX, outboxKey } from "../../../lib/kv/schema.ts";
import type { UsageEvent } from "../../../lib/billing/types.ts";

/** A billed event of its own account, key and model: each brings its own rollup counters. */
function event(i: number, now: number): UsageEvent {
  return {
    id: newId("evt", now),
    account_id: `acct_batch_${String(i).padStart(4, "0")}_${"x".repeat(20)}`,
    ts: now,
    request_id: newId("req", now),
    key_id: `key_batch_${String(i).padStart(4, "0")}_${"y".repeat(20)}`,
    key_name: "batch",
    provider: "openai",
    model: `gpt-4o-mini-batch-${i}`,
    prompt_tokens: 1000,
    completion_tokens: 200,
    cached_tokens: 400,
    cache_write_tokens: 10,
    reasoning_tokens: 50,
    cost: 192_000n,
    market_cost: 240_000n,
    latency_ms: 5,
    status: 200,
    streaming: false,
    client_ip: "127.0.0.1",
    user_agent: "test",
    billed: true,
    balance_after: 1_000_000n,
    error_code: null,
  };
}

Deno.test("one delivery of events from many accounts fits Deno KV's per-atomic key size limit", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const now = Date.now();
    const events = Array.from({ length: 150 }, (_, i) => event(i, now));
    for (const e of events) await kv.set(outboxKey(e.id), e);

    const recorded = await recordEvents(kv, events.map((e) => e.id));

    assert.equal(recorded, events.length, "every event is recorded");
    const left = await Array.fromAsync(kv.list({ prefix: OUTBOX_PREFIX }));
    assert.equal(left.length, 0, "the outbox is empty");
    for (const e of events) {
      const row = await kv.get(auditIdKey(e.account_id, e.request_id));
      assert.equal(row.value, e.ts, `the audit row of ${e.account_id} exists`);
    }
    assert.equal(
      await recordEvents(kv, events.map((e) => e.id)),
      0,
      "a second delivery records nothing",
    );
  } finally {
    kv.close();
  }
});
