/** Books written through the real router, for the tests that move, migrate or check them. */
import assert from "node:assert/strict";
import { json, type TestRouter } from "./_helpers.ts";
import { signUp } from "../lib/onboarding.ts";
import { createSession } from "../lib/auth/sessions.ts";
import { warmUsageDigests } from "../lib/usage/warm.ts";
import { DAY_MS } from "../lib/usage/period.ts";
import { ledgerTotalKey, ledgerTotalsCompleteKey, SCHEMA_VERSION_KEY } from "../lib/kv/schema.ts";

export interface Books {
  accounts: { id: string; mgmt: string; key: string }[];
}

/** One chat completion, streamed or not, through the router and its fake OpenAI. */
export async function chat(t: TestRouter, key: string, stream: boolean, model = "gpt-4o-mini") {
  const res = await t.call(key, "POST", "/v1/chat/completions", {
    model,
    messages: [{ role: "user", content: "hello books" }],
    max_tokens: 32,
    stream,
    ...(stream ? { stream_options: { include_usage: true } } : {}),
  });
  const text = await res.text();
  return { status: res.status, text };
}

/**
 * Two accounts with every kind of record the router keeps: keys, purchases (development
 * checkout), adjustments both ways, a refund, usage streamed and not (ledger, audit rows, rollups,
 * digests), a refused request (an audit row, no ledger row), a user with a membership and a
 * dashboard session. Everything is recorded when it resolves.
 */
export async function populateBooks(t: TestRouter): Promise<Books> {
  const accounts = [await t.account("5"), await t.account("3")];
  const [a, b] = accounts;
  await json(await t.call(a.mgmt, "POST", "/v1/billing/checkout", { package_id: "starter" }), 201);
  await json(
    await t.admin("POST", `/v1/admin/accounts/${b.id}/adjustments`, {
      amount: "-0.25",
      reason: "take back",
    }),
    201,
  );
  await json(
    await t.admin("POST", `/v1/admin/accounts/${a.id}/refunds`, {
      amount: "0.5",
      reason: "goodwill",
    }),
    201,
  );
  for (const acct of accounts) {
    for (const stream of [false, true, false, true]) {
      assert.equal((await chat(t, acct.key, stream)).status, 200);
    }
  }
  assert.equal((await chat(t, a.key, false, "no-such-model")).status, 404);
  const user = await signUp(t.kv, {
    email: "owner@example.com",
    name: "Owner",
    password: "correct horse battery staple",
    accountName: "Owned Co",
  }, Date.now());
  assert.ok(user);
  await createSession(
    t.kv,
    { kind: "user", user_id: user.user.id, account_id: user.account.id },
    Date.now(),
  );
  // A record kind the router may gain later: carried as it is, types and all.
  await t.kv.set(["future_kind", a.id, 7n, new Uint8Array([0, 255])], new Deno.KvU64(42n));
  await t.router.flush();
  // Today's buckets, digested as they will be once the day is closed.
  await warmUsageDigests(t.kv, Date.now() + 2 * DAY_MS);
  return { accounts: accounts.map(({ id, mgmt, key }) => ({ id, mgmt, key })) };
}

/** Makes `kv` what the previous schema wrote: no ledger totals, no schema version. */
export async function asPreviousSchema(kv: Deno.Kv) {
  const atomic = kv.atomic().delete(SCHEMA_VERSION_KEY);
  for await (const e of kv.list({ prefix: ["account"] })) {
    const id = String(e.key[1]);
    atomic.delete(ledgerTotalsCompleteKey(id)).delete(ledgerTotalKey(id, "credit"))
      .delete(ledgerTotalKey(id, "debit"));
  }
  assert.ok((await atomic.commit()).ok);
}

/** Every entry under `prefix`, key and value, in key order. */
export async function entries(kv: Deno.Kv, prefix: Deno.KvKey) {
  return (await Array.fromAsync(kv.list({ prefix }))).map((e) => ({ key: e.key, value: e.value }));
}
