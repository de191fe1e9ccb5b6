/**
 * The account's saved card. Production billing saves it through a Stripe Checkout Session in
 * `setup` mode: the customer enters the card on Stripe's page, and the session's
 * `checkout.session.completed` event names the SetupIntent whose PaymentMethod is kept (brand,
 * last four, expiry) and made the customer's default. Development billing saves one of Stripe's
 * test cards at once. Forgetting the card turns auto top-up off in the same atomic.
 */
import Stripe from "stripe";
import type { SpendDeps } from "../spend_deps.ts";
import { autoTopupKey, paymentMethodKey } from "../../kv/schema.ts";
import { commitRetrying } from "../../kv/util.ts";
import { getAccount } from "../accounts.ts";
import { BILLING_PAGE, customerForAccount } from "../stripe/checkout.ts";
import type { AutoTopup, SavedCard } from "./records.ts";

/**
 * Development's cards, named as Stripe names its test PaymentMethods: the second is declined, the
 * third needs authentication (so a top-up charging it fails as those would).
 */
export const TEST_CARDS = {
  pm_card_visa: { brand: "visa", last4: "4242", failure: null },
  pm_card_chargeDeclined: { brand: "visa", last4: "0002", failure: "card_declined" },
  pm_card_authenticationRequired: { brand: "visa", last4: "3155", failure: "requires_action" },
} as const;
export type TestCard = keyof typeof TEST_CARDS;

/**
 * Saves `card` as the account's, unless the card stored came from a newer setup; returns the card
 * it replaced (null: none) and whether it was saved.
 */
export async function saveCard(
  kv: Deno.Kv,
  accountId: string,
  card: SavedCard,
): Promise<{ saved: boolean; previous: SavedCard | null }> {
  const key = paymentMethodKey(accountId);
  for (let attempt = 0; attempt < 20; attempt++) {
    const e = await kv.get<SavedCard>(key);
    if (e.value && e.value.id !== card.id && e.value.setup_created > card.setup_created) {
      return { saved: false, previous: e.value };
    }
    if ((await commitRetrying(kv.atomic().check(e).set(key, card))).ok) {
      return { saved: true, previous: e.value };
    }
  }
  throw new Error("the saved card changed while it was being saved");
}

/** Development: saves one of the test cards at once, expiring in three years. */
export async function saveTestCard(
  svc: SpendDeps,
  accountId: string,
  name: TestCard,
): Promise<SavedCard> {
  const now = svc.now();
  const t = TEST_CARDS[name];
  const card: SavedCard = {
    id: name,
    brand: t.brand,
    last4: t.last4,
    exp_month: 12,
    exp_year: new Date(now).getUTCFullYear() + 3,
    saved_at: new Date(now).toISOString(),
    setup_created: Math.floor(now / 1000),
  };
  await saveCard(svc.kv, accountId, card);
  return card;
}

/**
 * Production: a Checkout Session in `setup` mode for the account's Stripe customer; returns the URL
 * to send the customer to. `idempotencyKey` makes a retried request return the same session.
 */
export async function createSetupSession(
  svc: SpendDeps,
  stripe: Stripe,
  opts: { accountId: string; origin: string; idempotencyKey: string },
): Promise<{ id: string; url: string }> {
  const metadata = { account_id: opts.accountId, purpose: "payment_method" };
  const customer = await customerForAccount(svc, stripe, opts.accountId);
  const session = await stripe.checkout.sessions.create({
    mode: "setup",
    customer,
    currency: "usd",
    client_reference_id: opts.accountId,
    metadata,
    setup_intent_data: { metadata },
    success_url: `${opts.origin}${BILLING_PAGE}?card=saved`,
    cancel_url: `${opts.origin}${BILLING_PAGE}?card=cancelled`,
  }, { idempotencyKey: opts.idempotencyKey });
  if (!session.url) throw new Error("Stripe returned a Checkout Session without a URL");
  return { id: session.id, url: session.url };
}

const idOf = (v: string | { id: string } | null | undefined) =>
  typeof v === "string" ? v : v?.id ?? null;

/**
 * A completed `setup` Checkout Session (its `checkout.session.completed` event): its SetupIntent's
 * card becomes the account's and the customer's default; the card it replaced is detached.
 */
export async function cardFromSetupSession(
  svc: SpendDeps,
  session: Stripe.Checkout.Session,
): Promise<"payment_method_saved" | "payment_method_kept" | "ignored"> {
  const accountId = session.metadata?.account_id ?? session.client_reference_id;
  const setupIntent = idOf(session.setup_intent);
  const stripe = svc.stripe;
  if (!accountId || !setupIntent || !stripe || session.status !== "complete") return "ignored";
  if (!await getAccount(svc.kv, accountId)) {
    svc.log("error", "stripe setup session of an unknown account", { session_id: session.id });
    return "ignored";
  }
  const si = await stripe.setupIntents.retrieve(setupIntent, { expand: ["payment_method"] });
  const pm = si.payment_method;
  if (si.status !== "succeeded" || typeof pm !== "object" || pm === null || !pm.card) {
    svc.log("warn", "stripe setup session without a usable card", {
      session_id: session.id,
      status: si.status,
    });
    return "ignored";
  }
  // Detached since (forgotten, or replaced by a newer card): Stripe would refuse to charge it, and
  // a redelivered event must not bring back a card the customer removed.
  const customer = idOf(si.customer) ?? idOf(session.customer);
  if (!customer || idOf(pm.customer) !== customer) {
    svc.log("info", "stripe setup session's card is no longer attached", {
      session_id: session.id,
    });
    return "ignored";
  }
  const card: SavedCard = {
    id: pm.id,
    brand: pm.card.brand,
    last4: pm.card.last4,
    exp_month: pm.card.exp_month,
    exp_year: pm.card.exp_year,
    saved_at: new Date(svc.now()).toISOString(),
    setup_created: si.created,
  };
  const { saved, previous } = await saveCard(svc.kv, accountId, card);
  if (!saved) return "payment_method_kept";
  // Stripe's side is tidied best-effort: the router charges only the card it stored.
  await bestEffort(svc, "set default", async () => {
    await stripe.customers.update(customer, {
      invoice_settings: { default_payment_method: pm.id },
    });
    if (previous && previous.id !== pm.id) await stripe.paymentMethods.detach(previous.id);
  });
  return "payment_method_saved";
}

/**
 * Forgets the account's card (detached in Stripe, best-effort) and turns auto top-up off with it;
 * returns the card forgotten, or null when there was none.
 */
export async function forgetCard(svc: SpendDeps, accountId: string): Promise<SavedCard | null> {
  const { kv } = svc;
  for (let attempt = 0; attempt < 20; attempt++) {
    const [card, topup] = await kv.getMany<[SavedCard, AutoTopup]>([
      paymentMethodKey(accountId),
      autoTopupKey(accountId),
    ]);
    if (!card.value) return null;
    const atomic = kv.atomic().check(card, topup).delete(card.key);
    if (topup.value?.enabled) {
      atomic.set(topup.key, {
        ...topup.value,
        enabled: false,
        updated_at: new Date(svc.now()).toISOString(),
      });
    }
    if (!(await commitRetrying(atomic)).ok) continue;
    const stripe = svc.config.billingMode === "production" ? svc.stripe : null;
    if (stripe) {
      await bestEffort(svc, "detach", () => stripe.paymentMethods.detach(card.value!.id));
    }
    return card.value;
  }
  throw new Error("the saved card changed while it was being forgotten");
}

async function bestEffort(svc: SpendDeps, what: string, f: () => Promise<unknown>) {
  try {
    await f();
  } catch (e) {
    svc.log("warn", `stripe payment method ${what} failed`, {
      type: e instanceof Stripe.errors.StripeError ? e.type : "unknown",
    });
  }
}
