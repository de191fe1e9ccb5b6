/** Helpers of the production billing tests: Checkout through the router, signed webhooks. */
import assert from "node:assert/strict";
import { json, type TestRouter } from "./_helpers.ts";
import type { FakeStripe } from "./_fakes/stripe.ts";

/** A ledger entry as GET /v1/transactions shows it. */
export type Tx = {
  type: string;
  amount: string;
  reference: string | null;
  description: string;
  receipt_url?: string;
};

/** Buys `packageId` through the router; returns the Checkout Session id. */
export async function checkout(
  t: TestRouter,
  stripe: FakeStripe,
  mgmt: string,
  packageId: string,
): Promise<string> {
  const body = await json(
    await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: packageId }),
    200,
  );
  const id = /\/c\/pay\/(cs_[a-z0-9_]+)$/.exec(body.url)?.[1];
  assert.ok(id && stripe.sessions.has(id), `a session URL: ${body.url}`);
  return id;
}

/** Delivers an event signed with `secret` to the webhook, without any API key. */
export async function deliverSigned(
  t: TestRouter,
  stripe: FakeStripe,
  event: Record<string, unknown>,
  secret: string,
): Promise<Response> {
  const { payload, header } = await stripe.sign(event, secret);
  return fetch(`${t.url}/v1/stripe/webhook`, {
    method: "POST",
    headers: { "content-type": "application/json", "stripe-signature": header },
    body: payload,
  });
}

/** The account's ledger, newest first, optionally of one type. */
export async function transactions(t: TestRouter, mgmt: string, type?: string): Promise<Tx[]> {
  const q = type ? `?type=${type}` : "";
  return (await json(await t.call(mgmt, "GET", `/v1/transactions${q}`), 200)).data;
}

/** The account's balance as GET /v1/credits shows it. */
export async function balance(t: TestRouter, mgmt: string): Promise<string> {
  return (await json(await t.call(mgmt, "GET", "/v1/credits"), 200)).balance;
}

/** Every KV key with its versionstamp: equal snapshots mean nothing was written. */
export async function kvStamps(kv: Deno.Kv): Promise<string[]> {
  const out: string[] = [];
  for await (const e of kv.list({ prefix: [] })) out.push(`${String(e.key)}@${e.versionstamp}`);
  return out;
}
