import assert from "node:assert/strict";
import Stripe from "stripe";
import { loadConfig } from "../../../../lib/config.ts";
import {
  createStripeClient,
  stripeOptions,
  verifyWebhook,
} from "../../../../lib/billing/stripe/client.ts";

const cryptoProvider = Stripe.createSubtleCryptoProvider();
const config = (env: Record<string, string>) =>
  loadConfig({ ADMIN_TOKEN: "test-admin-token-0123456789", KV_PATH: ":memory:", ...env });

Deno.test("stripeOptions points the client at STRIPE_API_BASE's host, port and protocol", () => {
  const local = stripeOptions(config({ STRIPE_API_BASE: "http://127.0.0.1:12111" }));
  assert.equal(local.host, "127.0.0.1");
  assert.equal(local.port, 12111);
  assert.equal(local.protocol, "http");
  const https = stripeOptions(config({ STRIPE_API_BASE: "https://stripe.internal.example" }));
  assert.deepEqual([https.host, https.port, https.protocol], [
    "stripe.internal.example",
    443,
    "https",
  ]);
  const real = stripeOptions(config({}));
  assert.equal(real.host, undefined, "Stripe's own API by default");
  assert.ok((real.maxNetworkRetries ?? 0) > 0, "network failures are retried");
});

Deno.test("createStripeClient is null without STRIPE_SECRET_KEY, a client with one", () => {
  assert.equal(createStripeClient(config({})), null);
  assert.ok(createStripeClient(config({ STRIPE_SECRET_KEY: "sk_test_x" })) instanceof Stripe);
});

Deno.test("verifyWebhook accepts any configured secret within five minutes, and nothing else", async () => {
  const payload = JSON.stringify({ id: "evt_1", object: "event", type: "ping", data: {} });
  const t0 = 1_800_000_000;
  const header = await Stripe.webhooks.generateTestHeaderStringAsync({
    payload,
    secret: "whsec_b",
    timestamp: t0,
    cryptoProvider,
  });
  const at = (s: number) => (t0 + s) * 1000;
  assert.equal((await verifyWebhook(payload, header, ["whsec_a", "whsec_b"], at(0)))?.id, "evt_1");
  assert.equal((await verifyWebhook(payload, header, ["whsec_b"], at(300)))?.id, "evt_1");
  assert.equal(await verifyWebhook(payload, header, ["whsec_b"], at(301)), null, "stale");
  assert.equal(await verifyWebhook(payload, header, ["whsec_a"], at(0)), null, "wrong secret");
  assert.equal(await verifyWebhook(payload + " ", header, ["whsec_b"], at(0)), null, "changed");
  assert.equal(await verifyWebhook(payload, undefined, ["whsec_b"], at(0)), null, "no header");
  assert.equal(await verifyWebhook(payload, "", ["whsec_b"], at(0)), null, "empty header");
});
