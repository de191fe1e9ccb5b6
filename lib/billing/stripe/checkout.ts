/**
 * Buying a package: one Stripe customer per account, Checkout Sessions, and the paid session's
 * events (`checkout.session.completed`, `async_payment_succeeded`) that grant its credit once.
 */
import Stripe from "stripe";
import type { CreditPackage } from "../packages.ts";
import type { LedgerEntry } from "../types.ts";
import type {
  CheckoutRecord,
  EventResult,
  StripeDeps,
  StripePayment,
  StripeRejection,
} from "./types.ts";
import { getAccount } from "../accounts.ts";
import { formatUsd } from "../../money.ts";
import { hashSecret } from "../../crypto.ts";
import {
  onceKey,
  stripeCheckoutKey,
  stripeCustomerKey,
  stripePaymentKey,
  stripeRejectedKey,
} from "../../kv/schema.ts";
import { creditEvent } from "../../webhooks/events.ts";
import { NANOS_PER_CENT } from "./client.ts";
import { idOf } from "./payments.ts";

/** Where Checkout sends the customer back to, below `PUBLIC_URL` (or the request origin). */
export const BILLING_PAGE = "/dashboard/settings/billing";

/**
 * The account's Stripe customer: created on the first checkout, stored, and reused after. With
 * `replacing`, that stored customer no longer exists in Stripe and a new one takes its place.
 */
export async function customerForAccount(
  deps: Pick<StripeDeps, "kv">,
  stripe: Stripe,
  accountId: string,
  replacing?: string,
): Promise<string> {
  const key = stripeCustomerKey(accountId);
  const stored = await deps.kv.get<string>(key);
  if (stored.value && stored.value !== replacing) return stored.value;
  const account = await getAccount(deps.kv, accountId);
  const customer = await stripe.customers.create(
    {
      name: account?.name,
      email: account?.email ?? undefined,
      metadata: { account_id: accountId },
    },
    // One key per account (and per replaced customer): two first checkouts at once get the same
    // customer from Stripe.
    {
      idempotencyKey: replacing
        ? `customer-${accountId}-after-${replacing}`
        : `customer-${accountId}`,
    },
  );
  const res = await deps.kv.atomic().check(stored).set(key, customer.id).commit();
  if (res.ok) return customer.id;
  return (await deps.kv.get<string>(key)).value ?? customer.id;
}

const isMissingCustomer = (e: unknown) =>
  e instanceof Stripe.errors.StripeInvalidRequestError && e.code === "resource_missing" &&
  e.param === "customer";

/**
 * Creates a Checkout Session selling `pkg` to the account and records what it sells; returns its
 * id and the URL to send the customer to. `idempotencyKey` makes a retried request return the
 * same session.
 *
 * @example
 * ```ts
 * const { url } = await createCheckoutSession(svc, svc.stripe!, {
 *   accountId, pkg, origin: "https://router.example", idempotencyKey,
 * });
 * ```
 */
export async function createCheckoutSession(
  deps: Pick<StripeDeps, "kv" | "now">,
  stripe: Stripe,
  opts: { accountId: string; pkg: CreditPackage; origin: string; idempotencyKey: string },
): Promise<{ id: string; url: string }> {
  const { accountId, pkg, origin } = opts;
  const metadata = { account_id: accountId, package_id: pkg.id };
  const create = (customer: string, idempotencyKey: string) =>
    stripe.checkout.sessions.create({
      mode: "payment",
      customer,
      client_reference_id: accountId,
      metadata,
      // The payment (and so its charges and refunds) carries the account too, for the operator.
      payment_intent_data: { metadata },
      line_items: [{
        quantity: 1,
        price_data: {
          currency: "usd",
          unit_amount: Number(pkg.price / NANOS_PER_CENT),
          product_data: {
            name: `${pkg.name} credit package`,
            description: `$${formatUsd(pkg.credits)} of API credit`,
          },
        },
      }],
      success_url: `${origin}${BILLING_PAGE}?checkout=success&session_id={CHECKOUT_SESSION_ID}`,
      cancel_url: `${origin}${BILLING_PAGE}?checkout=cancelled`,
    }, { idempotencyKey });
  let customer = await customerForAccount(deps, stripe, accountId);
  let session: Stripe.Checkout.Session;
  try {
    session = await create(customer, opts.idempotencyKey);
  } catch (e) {
    // The stored customer was deleted in Stripe: make a new one and try once more.
    if (!isMissingCustomer(e)) throw e;
    customer = await customerForAccount(deps, stripe, accountId, customer);
    session = await create(customer, `${opts.idempotencyKey}-${customer}`);
  }
  if (!session.url) throw new Error("Stripe returned a Checkout Session without a URL");
  const record: CheckoutRecord = {
    account_id: accountId,
    package_id: pkg.id,
    name: pkg.name,
    price: pkg.price,
    credits: pkg.credits,
    created_at: new Date(deps.now()).toISOString(),
  };
  await deps.kv.set(stripeCheckoutKey(session.id), record);
  return { id: session.id, url: session.url };
}

/** The Stripe idempotency key of a checkout request: the client's key if it sent one. */
export async function checkoutIdempotencyKey(
  accountId: string,
  clientKey: string | undefined,
  requestId: string,
): Promise<string> {
  if (!clientKey) return `checkout-${requestId}`;
  return `checkout-${accountId}-${await hashSecret(clientKey)}`;
}

/**
 * A completed Checkout Session: once paid, credits what the router recorded when it created it
 * (metadata's package where no record is), once per session; a session it cannot credit is
 * recorded under its payment as rejected.
 */
export async function creditSession(
  deps: StripeDeps,
  session: Stripe.Checkout.Session,
): Promise<EventResult> {
  if (session.mode !== "payment") return "ignored";
  const accountId = session.metadata?.account_id ?? session.client_reference_id;
  // A session this router did not create (another product on the same Stripe account).
  if (!accountId) return "ignored";
  // An async method (bank debit) completes unpaid; its async_payment_succeeded grants the credit.
  if (session.payment_status !== "paid") return "awaiting_payment";
  const paymentIntent = idOf(session.payment_intent);
  const reject = async (reason: string) => {
    deps.log("error", "stripe checkout session not credited", {
      session_id: session.id,
      account_id: accountId,
      reason,
    });
    // Recorded (once) so that a refund of this payment is answered instead of waiting for a
    // purchase that will never come.
    if (paymentIntent) {
      const key = stripeRejectedKey(paymentIntent);
      const rejection: StripeRejection = {
        session_id: session.id,
        account_id: accountId,
        reason,
        rejected_at: new Date(deps.now()).toISOString(),
      };
      await deps.kv.atomic().check({ key, versionstamp: null }).set(key, rejection).commit();
    }
    return "rejected" as const;
  };
  if (session.client_reference_id && session.client_reference_id !== accountId) {
    return await reject("client_reference_id and metadata name different accounts");
  }
  // What was sold is what the router recorded at creation; metadata is the fallback.
  const record = (await deps.kv.get<CheckoutRecord>(stripeCheckoutKey(session.id))).value;
  let sold: { name: string; price: bigint; credits: bigint };
  if (record) {
    if (record.account_id !== accountId) {
      return await reject("session record names another account");
    }
    sold = record;
  } else {
    const pkg = deps.packages.find((p) => p.id === session.metadata?.package_id);
    if (!pkg) return await reject("unknown package");
    sold = pkg;
  }
  if (session.currency !== "usd" || session.amount_total !== Number(sold.price / NANOS_PER_CENT)) {
    return await reject("the amount paid is not the package's price");
  }
  if (!await getAccount(deps.kv, accountId)) return await reject("unknown account");

  if (paymentIntent) {
    // Written before the credit, so every credited payment can be found by its refunds.
    const payment: StripePayment = {
      account_id: accountId,
      session_id: session.id,
      name: sold.name,
      amount: session.amount_total,
      credits: sold.credits,
    };
    await deps.kv.set(stripePaymentKey(paymentIntent), payment);
  }
  const once = onceKey(accountId, session.id);
  // Asked of Stripe before the first credit only: a redelivery replays the credit as it was.
  const receipt = paymentIntent && (await deps.kv.get(once)).value === null
    ? await receiptUrl(deps, paymentIntent)
    : null;
  const r = await deps.actors.submit(accountId, {
    kind: "credit",
    type: "purchase",
    amount: sold.credits,
    description: `Stripe Checkout: ${sold.name} package`,
    reference: session.id,
    once: { key: once, value: (e: LedgerEntry) => e.id },
    receipt_url: receipt ?? undefined,
    event: creditEvent(accountId, "credits.purchased", deps.entryData),
  });
  return r.replayed ? "already_credited" : "credited";
}

/**
 * A charge's `receipt_url` as kept on its ledger row: an https URL of at most 2048 characters
 * (pages show it as a link; a longer one would overflow the row), else null.
 */
export const keptReceipt = (url: string | null | undefined): string | null =>
  url && url.length <= 2048 && URL.parse(url)?.protocol === "https:" ? url : null;

/**
 * The receipt of a payment (its charge's `receipt_url`), or null when Stripe has none or does not
 * answer within a few seconds: the credit does not wait on it. Only an https URL is kept (pages
 * show it as a link).
 */
export async function receiptUrl(
  deps: Pick<StripeDeps, "stripe" | "log">,
  paymentIntent: string,
): Promise<string | null> {
  const stripe = deps.stripe;
  if (!stripe) return null;
  try {
    const pi = await stripe.paymentIntents.retrieve(
      paymentIntent,
      { expand: ["latest_charge"] },
      { timeout: 5000, maxNetworkRetries: 0 },
    );
    const charge = pi.latest_charge;
    return keptReceipt(typeof charge === "object" && charge !== null ? charge.receipt_url : null);
  } catch (e) {
    deps.log("warn", "stripe receipt not available", {
      payment_intent: paymentIntent,
      type: e instanceof Stripe.errors.StripeError ? e.type : "unknown",
    });
  }
  return null;
}
