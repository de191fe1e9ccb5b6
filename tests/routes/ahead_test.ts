/**
 * Calling the provider while the hold commits: when this process's last committed state of the
 * account covers a request's hold (every other deciding reserve counted), the upstream call starts
 * at once and the hold commits meanwhile; nothing reaches the client, and nothing is settled,
 * before the hold is granted, and a refused hold aborts the call.
 */
import assert from "node:assert/strict";
import { json, startRouter, type TestRouter } from "../_helpers.ts";

const body = { model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] };

/** A KV whose atomics that write a hold wait for `gate.closed` (when set) before committing. */
function holdGated(kv: Deno.Kv, gate: { closed: Promise<void> | null }): Deno.Kv {
  const bind = <T extends object>(o: T, p: string | symbol) => {
    const v = Reflect.get(o, p);
    return typeof v === "function" ? v.bind(o) : v;
  };
  return new Proxy(kv, {
    get(target, p) {
      if (p !== "atomic") return bind(target, p);
      return () => {
        const op = target.atomic();
        let writesHold = false;
        const wrapped: Deno.AtomicOperation = new Proxy(op, {
          get(o, q) {
            if (q === "set") {
              return (key: Deno.KvKey, value: unknown, options?: { expireIn?: number }) => {
                if (key[0] === "hold") writesHold = true;
                o.set(key, value, options);
                return wrapped;
              };
            }
            if (q === "commit") {
              return async () => {
                if (writesHold && gate.closed) await gate.closed;
                return o.commit();
              };
            }
            return bind(o, q);
          },
        });
        return wrapped;
      };
    },
  });
}

async function until(what: string, done: () => boolean | Promise<boolean>) {
  for (let i = 0; i < 1000; i++) {
    if (await done()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.fail(`timed out waiting until ${what}`);
}

async function holdsOf(t: TestRouter, accountId: string) {
  let n = 0;
  for await (const _ of t.kv.list({ prefix: ["hold", accountId] })) n++;
  return n;
}

async function debits(t: TestRouter, mgmt: string): Promise<unknown[]> {
  await t.router.flush();
  return (await json(await t.call(mgmt, "GET", "/v1/transactions?type=usage_debit"), 200)).data;
}

Deno.test("the provider is called while a covered hold commits; the reply waits for it", async () => {
  const gate: { closed: Promise<void> | null } = { closed: null };
  const t = await startRouter({ wrapKv: (kv) => holdGated(kv, gate) });
  try {
    const { id, key, mgmt } = await t.account("5");
    // The first request of the account reads its state; it stays cached once committed.
    await json(await t.call(key, "POST", "/v1/chat/completions", body), 200);
    let open!: () => void;
    gate.closed = new Promise((r) => open = r);
    const pending = t.call(key, "POST", "/v1/chat/completions", body);
    await until("the provider has the second request", () => t.openai.requests.length === 2);
    assert.equal(await holdsOf(t, id), 0, "its hold is not committed yet");
    let answered = false;
    pending.then(() => answered = true, () => {});
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(answered, false, "no reply before the hold is granted");
    open();
    const reply = await json(await pending, 200);
    assert.ok(reply.usage.cost > 0);
    assert.equal((await debits(t, mgmt)).length, 2);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("an account's first request, with nothing cached, is sent once its hold is granted", async () => {
  let opened = false;
  const gate: { closed: Promise<void> | null } = {
    closed: new Promise<void>((r) => setTimeout(r, 300)).then(() => {
      opened = true;
    }),
  };
  const t = await startRouter({ wrapKv: (kv) => holdGated(kv, gate) });
  try {
    const { key } = await t.account("5");
    t.openai.scenario = { delayMs: 200 };
    const pending = t.call(key, "POST", "/v1/chat/completions", body);
    await until("the provider has the request", () => t.openai.requests.length === 1);
    assert.equal(opened, true, "the request left only after its hold committed");
    await json(await pending, 200);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a hold not covered once the other deciding holds are counted is not sent ahead", async () => {
  const gate: { closed: Promise<void> | null } = { closed: null };
  const t = await startRouter({ wrapKv: (kv) => holdGated(kv, gate) });
  try {
    // A credit that covers one hold of 10,000 output tokens (at the model's rate) but not two.
    const models = await json(await fetch(`${t.url}/v1/models`), 200);
    const mini = models.data.find((m: { id: string }) => m.id === "openai/gpt-4o-mini");
    const hold = 10_000 * Number(mini.pricing.your_rate.output) / 1e6;
    const { id, key, mgmt } = await t.account((1.6 * hold).toFixed(9));
    await json(await t.call(key, "POST", "/v1/chat/completions", { ...body, max_tokens: 10 }), 200);
    const big = { ...body, max_tokens: 10_000 };
    let open!: () => void;
    gate.closed = new Promise((r) => open = r);
    // The first is covered: sent ahead while its hold waits at the gate.
    const first = t.call(key, "POST", "/v1/chat/completions", big);
    await until("the first is at the provider", () => t.openai.requests.length === 2);
    assert.equal(await holdsOf(t, id), 0);
    // The second is not, with the first's hold counted while it decides (or once committed).
    const second = t.call(key, "POST", "/v1/chat/completions", big);
    await new Promise((r) => setTimeout(r, 50));
    open();
    const refused = await second;
    assert.equal(refused.status, 402);
    assert.equal((await refused.json()).error.code, "insufficient_credits");
    await json(await first, 200);
    assert.equal(t.openai.requests.length, 2, "the refused request never reached the provider");
    assert.equal((await debits(t, mgmt)).length, 2);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a key's limit lowered in this process is judged afresh: the refused request is not sent ahead", async () => {
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

Deno.test("a hold refused while the provider is called aborts the call and bills nothing", async () => {
  const dir = await Deno.makeTempDir();
  const env = { OUTBOX_DELIVERY: "drainer" };
  const a = await startRouter({ kvPath: `${dir}/router.kv`, env });
  const b = await startRouter({ kvPath: `${dir}/router.kv`, env });
  try {
    const { id, key, mgmt } = await a.account("1");
    await json(await b.call(key, "POST", "/v1/chat/completions", body), 200);
    await b.router.flush();
    // Another process takes the whole balance: b's cached state still shows it.
    const { balance } = await json(await a.admin("GET", `/v1/admin/accounts/${id}`), 200);
    await json(
      await a.admin("POST", `/v1/admin/accounts/${id}/adjustments`, {
        amount: `-${balance}`,
        reason: "spent elsewhere",
      }),
      201,
    );
    b.openai.scenario = { delayMs: 2000 };
    const refused = await b.call(key, "POST", "/v1/chat/completions", body);
    assert.equal(refused.status, 402);
    assert.equal((await refused.json()).error.code, "insufficient_credits");
    assert.equal(b.openai.requests.length, 2, "the call had been sent ahead");
    await until("the provider sees the call abandoned", () => b.openai.aborted === 1);
    await b.router.flush();
    assert.equal((await debits(a, mgmt)).length, 1, "only the first request is billed");
    await a.assertBooks();
  } finally {
    await a.close();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});
