/**
 * No provider call on credit the process does not hold: a request whose hold comes from this
 * process's balance lease is sent at once (no KV round trip before it); one that needs a shared
 * hold (the account near exhaustion) is sent only once that hold has committed; and across
 * processes every provider call is a billed request.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { json, startRouter, type TestRouter, until } from "../../_helpers.ts";
import { interceptCommits } from "../../_fixtures.ts";

const body = { model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] };

/** A KV whose commits wait for `gate.closed` (when set) if `held(prefixes)` says so. */
const gated = (
  kv: Deno.Kv,
  gate: { closed: Promise<void> | null },
  held: (prefixes: Set<unknown>) => boolean,
) =>
  interceptCommits(kv, async (prefixes, commit) => {
    if (gate.closed && held(prefixes)) await gate.closed;
    return commit();
  });

async function debits(t: TestRouter, mgmt: string): Promise<unknown[]> {
  await t.router.flush();
  return (await json(await t.call(mgmt, "GET", "/v1/transactions?type=usage_debit"), 200)).data;
}

Deno.test("once the account has a lease, a request reaches the provider with no commit before it", async () => {
  const gate: { closed: Promise<void> | null } = { closed: null };
  const t = await startRouter({ wrapKv: (kv) => gated(kv, gate, () => true) });
  try {
    const { key, mgmt } = await t.account("5");
    // The first request takes the lease.
    await json(await t.call(key, "POST", "/v1/chat/completions", body), 200);
    let open!: () => void;
    gate.closed = new Promise((r) => open = r);
    const pending = t.call(key, "POST", "/v1/chat/completions", body);
    await until(
      "the provider has the second request",
      5000,
      () => t.openai.requests.length === 2 || null,
    );
    let answered = false;
    pending.then(() => answered = true, () => {});
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(answered, false, "the reply waits for its settlement to commit");
    open();
    const reply = await json(await pending, 200);
    assert.ok(reply.usage.cost > 0);
    assert.equal((await debits(t, mgmt)).length, 2);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("near exhaustion a request is sent only once its shared hold has committed", async () => {
  const gate: { closed: Promise<void> | null } = { closed: null };
  const t = await startRouter({
    wrapKv: (kv) => gated(kv, gate, (prefixes) => prefixes.has("hold")),
  });
  try {
    // Room for a few holds: too little to lease.
    const { key, mgmt } = await t.account("0.0002");
    const small = { ...body, max_tokens: 16 };
    await json(await t.call(key, "POST", "/v1/chat/completions", small), 200);
    let open!: () => void;
    let opened = false;
    gate.closed = new Promise<void>((r) => open = r).then(() => {
      opened = true;
    });
    const pending = t.call(key, "POST", "/v1/chat/completions", small);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(t.openai.requests.length, 1, "not sent while its hold commits");
    open();
    await json(await pending, 200);
    assert.ok(opened);
    assert.equal(t.openai.requests.length, 2);
    assert.equal((await debits(t, mgmt)).length, 2);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a key's limit lowered in this process is judged afresh: the refused request is never sent", async () => {
  const t = await startRouter();
  try {
    const { key, keyId, mgmt } = await t.account("5", { credit_limit: "5" });
    await json(await t.call(key, "POST", "/v1/chat/completions", body), 200);
    await json(await t.call(key, "POST", "/v1/chat/completions", body), 200);
    await json(await t.call(mgmt, "PATCH", `/v1/keys/${keyId}`, { credit_limit: "0.000001" }), 200);
    const refused = await t.call(key, "POST", "/v1/chat/completions", body);
    assert.equal(refused.status, 402);
    assert.equal((await refused.json()).error.code, "key_limit_exceeded");
    assert.equal(t.openai.requests.length, 2, "the refused request never reached the provider");
    assert.equal((await debits(t, mgmt)).length, 2);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("two processes, rounds of parallel requests whose balance covers one: every provider call is billed", async () => {
  const dir = await Deno.makeTempDir();
  const env = { OUTBOX_DELIVERY: "drainer" };
  const a = await startRouter({ kvPath: `${dir}/router.kv`, env });
  const b = await startRouter({ kvPath: `${dir}/router.kv`, env });
  try {
    const { id, key, mgmt } = await a.account("0");
    const models = await json(await fetch(`${a.url}/v1/models`), 200);
    const mini = models.data.find((m: { id: string }) => m.id === "openai/gpt-4o-mini");
    const request = {
      model: "gpt-4o-mini",
      messages: [{ role: "user" as const, content: "hi" }],
      max_tokens: 1000,
    };
    // The worst case of one request (1000 output tokens and a short prompt), not two.
    const hold = 1000 * Number(mini.pricing.your_rate.output) / 1e6 + 0.0001;
    const clients = [a, b].map((t) =>
      new OpenAI({ apiKey: key, baseURL: `${t.url}/v1`, maxRetries: 0 })
    );
    let billed = 0, refused = 0;
    for (let round = 0; round < 20; round++) {
      // Each round's balance covers one worst case, not two.
      const { balance } = await json(await a.admin("GET", `/v1/admin/accounts/${id}`), 200);
      const top = (hold - Number(balance)).toFixed(9);
      await json(
        await a.admin("POST", `/v1/admin/accounts/${id}/adjustments`, {
          amount: top,
          reason: "round",
        }),
        201,
      );
      const outcomes = await Promise.allSettled(
        Array.from({ length: 6 }, (_, i) => clients[i % 2].chat.completions.create(request)),
      );
      for (const o of outcomes) {
        if (o.status === "fulfilled") billed++;
        else {
          assert.equal((o.reason as { status?: number }).status, 402);
          refused++;
        }
      }
    }
    assert.ok(billed >= 20 && refused > 0);
    await a.router.flush();
    await b.router.flush();
    const calls = a.openai.requests.length + b.openai.requests.length;
    assert.equal(calls, billed, "provider calls = billed requests; none refused after the call");
    assert.equal((await debits(a, mgmt)).length, billed);
    await a.assertBooks();
  } finally {
    await a.close();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});
