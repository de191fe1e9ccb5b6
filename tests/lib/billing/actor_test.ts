import assert from "node:assert/strict";
import { json, startRouter, type TestRouter } from "../../_helpers.ts";
import { parseUsd } from "../../../lib/money.ts";

// About 480 bytes of prompt: the hold counts one token per byte (≈ 72 µ$ + 50 output tokens),
// while the upstream reports 100 + 20 tokens: (100 × 150 + 20 × 600) × 0.8 = 21600 nano-USD.
const PROMPT = "tell me about ledgers ".repeat(20);
const COST = 21_600n;
const USAGE = { prompt_tokens: 100, completion_tokens: 20 };

interface Outcome {
  status: number;
  code?: string;
  cost?: number;
}

/** Fires `n` chat requests at once (real HTTP), spread over the given routers. */
async function burst(routers: TestRouter[], key: string, n: number): Promise<Outcome[]> {
  return await Promise.all(Array.from({ length: n }, async (_, i) => {
    const t = routers[i % routers.length];
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "openai/gpt-4o-mini",
      messages: [{ role: "user", content: PROMPT }],
      max_tokens: 50,
    });
    const body = await res.json();
    return res.status === 200
      ? { status: 200, cost: body.usage.cost }
      : { status: res.status, code: body.error?.code };
  }));
}

/** Checks the outcome of a burst against the ledger: one exact debit per success, no more. */
async function checkBooks(
  t: TestRouter,
  mgmt: string,
  outcomes: Outcome[],
  credit: bigint,
  refusal: string,
) {
  const ok = outcomes.filter((o) => o.status === 200);
  const refused = outcomes.filter((o) => o.status !== 200);
  assert.ok(ok.length > 0, "some requests fit");
  assert.ok(refused.length > 0, "some requests did not fit");
  for (const r of refused) assert.deepEqual(r, { status: 402, code: refusal });
  for (const o of ok) assert.equal(o.cost, Number(COST) / 1e9);

  await t.assertBooks();
  const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
  const balance = parseUsd(credits.balance)!;
  assert.ok(balance >= 0n, `never overspent (balance ${credits.balance})`);
  assert.equal(balance, credit - BigInt(ok.length) * COST);
  assert.equal(credits.reserved, "0");

  const debits: string[] = [];
  let cursor: string | null = null;
  do {
    const page: { data: { amount: string }[]; next_cursor: string | null } = await json(
      await t.call(
        mgmt,
        "GET",
        `/v1/transactions?type=usage_debit&limit=1000${cursor ? `&cursor=${cursor}` : ""}`,
      ),
      200,
    );
    debits.push(...page.data.map((e) => e.amount));
    cursor = page.next_cursor;
  } while (cursor);
  assert.equal(debits.length, ok.length, "each success debited exactly once");
  for (const d of debits) assert.equal(parseUsd(d), -COST);
  return ok.length;
}

Deno.test("200 concurrent requests on a balance that covers some: never overspent, each debited once", async () => {
  const t = await startRouter();
  try {
    const credit = 2_000_000n; // $0.002: about 24 holds at once, 92 requests at actual cost
    const { key, mgmt } = await t.account("0.002");
    t.openai.scenario = { usage: USAGE, delayMs: 20 };
    const outcomes = await burst([t], key, 200);
    await checkBooks(t, mgmt, outcomes, credit, "insufficient_credits");
    const refusal = await t.call(key, "POST", "/v1/chat/completions", {
      model: "openai/gpt-4o-mini",
      messages: [{ role: "user", content: PROMPT }],
      max_tokens: 100_000,
    });
    const body = await json(refusal, 402);
    assert.match(body.error.message, /Set max_tokens to \d+ or less/, "says what is affordable");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("200 concurrent requests against a key's credit limit: 402 key_limit_exceeded, limit kept", async () => {
  const t = await startRouter();
  try {
    const { key, keyId, mgmt } = await t.account("1", { credit_limit: "0.0005" });
    t.openai.scenario = { usage: USAGE, delayMs: 20 };
    const outcomes = await burst([t], key, 200);
    const n = await checkBooks(t, mgmt, outcomes, 1_000_000_000n, "key_limit_exceeded");
    const k = await json(await t.call(mgmt, "GET", `/v1/keys/${keyId}`), 200);
    assert.equal(parseUsd(k.spend), BigInt(n) * COST);
    assert.ok(parseUsd(k.spend)! <= 500_000n, "the key's limit is never exceeded");
    const self = await json(await t.call(key, "GET", "/v1/key"), 200);
    assert.equal(self.spend, k.spend);
    assert.equal(parseUsd(self.remaining), 500_000n - BigInt(n) * COST);
  } finally {
    await t.close();
  }
});

Deno.test("two router processes on one KV file share the balance without overspending", async () => {
  const dir = await Deno.makeTempDir();
  const kvPath = `${dir}/router.kv`;
  const a = await startRouter({ kvPath });
  const b = await startRouter({ kvPath });
  try {
    const { key, mgmt } = await a.account("0.002");
    a.openai.scenario = b.openai.scenario = { usage: USAGE, delayMs: 20 };
    const outcomes = await burst([a, b], key, 200);
    await b.router.flush();
    await checkBooks(a, mgmt, outcomes, 2_000_000n, "insufficient_credits");
  } finally {
    await a.close();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an upstream reporting more output than max_tokens is billed max_tokens, never overdrawn", async () => {
  const logs: string[] = [];
  const t = await startRouter({ log: (_l, msg) => logs.push(msg) });
  try {
    // max_tokens 10, yet a million output tokens reported: $0.48 at list price.
    t.openai.scenario = { usage: { prompt_tokens: 5, completion_tokens: 1_000_000 } };
    for (const stream of [false, true]) {
      const { key, mgmt } = await t.account("0.0001");
      const res = await t.call(key, "POST", "/v1/chat/completions", {
        model: "gpt-4o-mini",
        messages: [{ role: "user", content: "hi" }],
        max_tokens: 10,
        stream,
        stream_options: stream ? { include_usage: true } : undefined,
      });
      const text = await res.text();
      assert.equal(res.status, 200, text);
      // Billed and shown as the 10 output tokens held: (5 × 150 + 10 × 600) × 0.8 nano-USD.
      assert.match(text, /"completion_tokens":10,/);
      assert.match(text, /"cost":0\.0000054[,}]/);
      await t.assertBooks();
      const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
      assert.equal(credits.total_used, "0.0000054");
      const tx = await json(await t.call(mgmt, "GET", "/v1/transactions?type=usage_debit"), 200);
      assert.deepEqual(tx.data.map((e: { amount: string }) => e.amount), ["-0.0000054"]);
    }
    assert.equal(logs.filter((m) => /beyond the hold/.test(m)).length, 2, "each clamp is logged");
  } finally {
    await t.close();
  }
});
