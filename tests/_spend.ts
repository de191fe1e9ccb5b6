/** Helpers of the spend-control tests: a priced model, a card saved through Stripe, spending. */
import assert from "node:assert/strict";
import { json, startRouter, type TestRouter } from "./_helpers.ts";
import { type FakeCard, type FakeStripe, startFakeStripe } from "./_fakes/stripe.ts";
import { deliverSigned } from "./_stripe.ts";
import type { ProvidersFile } from "../lib/providers/registry.ts";

export const SECRET = "whsec_test_spend_0123456789";

/** gpt-4o-mini at $0.01 a token, no discount: a request of 10 prompt tokens costs $0.10. */
export const PRICED: ProvidersFile = {
  models: {
    "openai/gpt-4o-mini": {
      prices: { input_mtok: "10000", output_mtok: "10000" },
      discount_percent: 0,
    },
  },
};

/** A small chat request (its hold: its body's bytes and one output token, at $0.01 each). */
export const CHAT = {
  model: "openai/gpt-4o-mini",
  messages: [{ role: "user" as const, content: "hi" }],
  max_tokens: 1,
};

/** A router in production billing against a fake Stripe (or development billing with `dev`). */
export async function spendRouter(
  fn: (t: TestRouter, stripe: FakeStripe) => Promise<void>,
  opts: { dev?: boolean; now?: () => number; kvPath?: string } = {},
) {
  const stripe = startFakeStripe();
  const t = await startRouter({
    env: {
      ...(opts.dev ? {} : {
        STRIPE_SECRET_KEY: "sk_test_router",
        STRIPE_WEBHOOK_SECRET: SECRET,
        STRIPE_API_BASE: stripe.url,
      }),
      WEBHOOK_ALLOW_PRIVATE_URLS: "true",
    },
    providersFile: PRICED,
    now: opts.now,
    kvPath: opts.kvPath,
  });
  // 10 prompt tokens and no output: $0.10 a request.
  t.openai.scenario = { usage: { prompt_tokens: 10, completion_tokens: 0 } };
  try {
    await fn(t, stripe);
  } finally {
    await t.close();
    await stripe.close();
  }
}

/**
 * Saves a card through Stripe as a customer would: the setup Checkout Session the router creates,
 * completed with `card`, then its signed `checkout.session.completed` event. Returns the
 * PaymentMethod id.
 */
export async function saveCard(
  t: TestRouter,
  stripe: FakeStripe,
  mgmt: string,
  card: FakeCard = "visa",
): Promise<string> {
  const { url } = await json(await t.call(mgmt, "POST", "/v1/billing/payment_method"), 200);
  const id = /\/c\/setup\/(cs_[a-z0-9_]+)$/.exec(url)?.[1];
  assert.ok(id, `a setup session URL: ${url}`);
  const session = stripe.completeSetup(id, card);
  const event = stripe.event("checkout.session.completed", session);
  const r = await json(await deliverSigned(t, stripe, event, SECRET), 200);
  assert.equal(r.result, "payment_method_saved");
  return stripe.setupIntents.get(session.setup_intent as string)!.payment_method as string;
}

/** Sends `n` chat requests one after another, each answered 200, waiting for what they cross. */
export async function spend(t: TestRouter, key: string, n: number) {
  for (let i = 0; i < n; i++) {
    await json(await t.call(key, "POST", "/v1/chat/completions", CHAT), 200);
    await t.router.svc.spend.idle();
  }
}

/** The account's auto top-up as GET /v1/billing/auto_topup shows it. */
export async function autoTopup(t: TestRouter, mgmt: string) {
  return await json(await t.call(mgmt, "GET", "/v1/billing/auto_topup"), 200);
}

/** The off-session PaymentIntents the router asked the fake Stripe to create. */
export const intentsCreated = (stripe: FakeStripe) =>
  stripe.requests.filter((r) => r.method === "POST" && r.path === "/v1/payment_intents");

/** Turns auto top-up on: at $2, $10 at a time, $100 a month, unless `settings` say otherwise. */
export async function enableTopup(
  t: TestRouter,
  mgmt: string,
  settings: Record<string, unknown> = {},
) {
  return await json(
    await t.call(mgmt, "PUT", "/v1/billing/auto_topup", {
      enabled: true,
      threshold: "2",
      amount: "10",
      monthly_cap: "100",
      ...settings,
    }),
    200,
  );
}
