/**
 * Balance leases seen from outside: invisible to customers (the figures of `GET /v1/credits`,
 * `GET /v1/key`, the keys list and the admin's accounts are those of an account without one, its
 * debits not yet folded in included); a key's credit limit holds across processes that each lease
 * a slice of it; and a request one process cannot fit while another's lease holds the credit is
 * served once that lease is recalled, not refused.
 */
import assert from "node:assert/strict";
import { json, startRouter, type TestRouter, until } from "../../_helpers.ts";
import { parseUsd } from "../../../lib/money.ts";
import { LEASE_PREFIX } from "../../../lib/kv/schema.ts";
import type { Lease } from "../../../lib/billing/types.ts";

const chat = (t: TestRouter, key: string, extra: Record<string, unknown> = {}) =>
  t.call(key, "POST", "/v1/chat/completions", {
    model: "openai/gpt-4o-mini",
    messages: [{ role: "user", content: "hi" }],
    max_tokens: 50,
    ...extra,
  });

const leases = async (t: TestRouter) =>
  (await Array.fromAsync(t.kv.list<Lease>({ prefix: LEASE_PREFIX }))).map((e) => e.value);

Deno.test("GET /v1/credits, /v1/key, the keys list and the admin's account count a lease's debits and holds in", async () => {
  const t = await startRouter();
  try {
    const { id, key, keyId, mgmt } = await t.account("1");
    t.openai.scenario = { usage: { prompt_tokens: 100, completion_tokens: 20 } };
    let used = 0n;
    for (let i = 0; i < 5; i++) {
      const r = await json(await chat(t, key), 200);
      used += parseUsd(r.usage.cost.toFixed(9))!;
    }
    const [lease] = await leases(t);
    assert.ok(lease.spent > 0n, "the debits are still on the lease, not folded in");
    const balance = 1_000_000_000n - used;
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(parseUsd(credits.balance), balance);
    assert.equal(parseUsd(credits.total_used), used);
    assert.deepEqual([credits.reserved, credits.available], ["0", credits.balance]);
    const self = await json(await t.call(key, "GET", "/v1/key"), 200);
    assert.deepEqual([parseUsd(self.spend), parseUsd(self.usage_today)], [used, used]);
    const listed = await json(await t.call(mgmt, "GET", "/v1/keys"), 200);
    const k = listed.data.find((x: { id: string }) => x.id === keyId);
    assert.equal(parseUsd(k.spend), used);
    const acct = await json(await t.admin("GET", `/v1/admin/accounts/${id}`), 200);
    assert.deepEqual([acct.balance, acct.available], [credits.balance, credits.balance]);

    // A stream in flight: its hold is shown as reserved, from the lease, once written to it.
    t.openai.scenario = { usage: { prompt_tokens: 100, completion_tokens: 20 }, chunks: 20 };
    t.openai.scenario.chunkDelayMs = 50;
    const res = await chat(t, key, { stream: true, stream_options: { include_usage: true } });
    assert.equal(res.status, 200);
    const held = await until("the stream's hold shown", 5000, async () => {
      const c = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
      return c.reserved !== "0" ? c : null;
    });
    assert.equal(
      parseUsd(held.available),
      parseUsd(held.balance)! - parseUsd(held.reserved)!,
      "available = balance − reserved",
    );
    await res.text();
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("two processes each leasing a slice of a key's credit limit never pass it, and bill each success once", async () => {
  const dir = await Deno.makeTempDir();
  const kvPath = `${dir}/router.kv`;
  const a = await startRouter({ kvPath });
  const b = await startRouter({ kvPath });
  try {
    const { key, keyId, mgmt } = await a.account("1", { credit_limit: "0.005" });
    a.openai.scenario = b.openai.scenario = {
      usage: { prompt_tokens: 100, completion_tokens: 20 },
      delayMs: 10,
    };
    const outcomes = await Promise.all(
      Array.from({ length: 400 }, async (_, i) => {
        const res = await chat(i % 2 ? a : b, key);
        const body = await res.json();
        return res.status === 200 ? parseUsd(body.usage.cost.toFixed(9))! : body.error.code;
      }),
    );
    const costs = outcomes.filter((o): o is bigint => typeof o === "bigint");
    const refusals = outcomes.filter((o) => typeof o === "string");
    assert.ok(costs.length > 100 && refusals.length > 0, `${costs.length} / ${refusals.length}`);
    for (const r of refusals) assert.equal(r, "key_limit_exceeded");
    await b.router.flush();
    await a.assertBooks();
    const spent = costs.reduce((s, c) => s + c, 0n);
    const k = await json(await a.call(mgmt, "GET", `/v1/keys/${keyId}`), 200);
    assert.equal(parseUsd(k.spend), spent, "the key's spend is every success, once");
    assert.ok(spent <= 5_000_000n, "never past its limit");
    const tx = await json(
      await a.call(mgmt, "GET", "/v1/transactions?type=usage_debit&limit=1000"),
      200,
    );
    assert.equal(tx.data.length, costs.length);
  } finally {
    await a.close();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a request that fits only with the credit another process's lease holds recalls that lease and is served", async () => {
  const dir = await Deno.makeTempDir();
  const kvPath = `${dir}/router.kv`;
  // Leases are never returned for idleness here: only the recall gives the credit back.
  const env = { LEASE_IDLE_MS: "60000" };
  const a = await startRouter({ kvPath, env });
  const b = await startRouter({ kvPath, env });
  try {
    const { key, mgmt } = await a.account("0.01");
    a.openai.scenario = b.openai.scenario = { usage: { prompt_tokens: 10, completion_tokens: 20 } };
    // a serves requests of a large worst case: its lease grows to a quarter of the credit.
    for (let i = 0; i < 20; i++) await json(await chat(a, key, { max_tokens: 1000 }), 200);
    const [lease] = await leases(a);
    assert.ok(lease.granted - lease.spent > 2_200_000n, `a's lease holds ${lease.granted}`);
    // b's request may cost up to the model's whole output (about $0.0079): more than is left
    // outside a's lease.
    const res = await chat(b, key, { max_tokens: 16384 });
    await json(res, 200);
    const after = await leases(a);
    assert.ok(after.length === 0 || after[0].granted < lease.granted, "a gave its credit back");
    await a.router.flush();
    await b.router.flush();
    await a.assertBooks();
    const tx = await json(await a.call(mgmt, "GET", "/v1/transactions?type=usage_debit"), 200);
    assert.equal(tx.data.length, 21);
  } finally {
    await a.close();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});
