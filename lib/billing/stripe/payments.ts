/**
 * What refunds and disputes share: finding the credited purchase of a payment, the charge's refunds
 * that count, the disputes' take-backs, and the one rule that shares a payment's credit out.
 */
import type Stripe from "stripe";
import type {
  DisputeTakeBack,
  RefundFailure,
  StripeDeps,
  StripeDispute,
  StripePayment,
  StripeRejection,
} from "./types.ts";
import {
  disputeIdOfKey,
  onceKey,
  stripeDisputesPrefix,
  stripePaymentKey,
  stripeRefundFailedKey,
  stripeRejectedKey,
} from "../../kv/schema.ts";
import { getAll } from "../../kv/util.ts";
import { RetryLater } from "../../errors.ts";

/** The id of an expandable Stripe field. */
export const idOf = (v: string | { id: string } | null | undefined) =>
  typeof v === "string" ? v : v?.id ?? null;

/**
 * The charge's refunds that count, oldest first: from the event when complete, else from the API;
 * none failed or canceled. A refund recorded as failed counts for nothing either, even where the
 * charge's list still shows it succeeded (an event built before the failure).
 */
export async function refundsOf(
  deps: StripeDeps,
  charge: { id: string; refunds?: Stripe.Charge["refunds"] },
): Promise<Stripe.Refund[]> {
  let refunds: Stripe.Refund[];
  if (charge.refunds && !charge.refunds.has_more) refunds = [...charge.refunds.data];
  else {
    const stripe = deps.stripe;
    if (!stripe) throw new Error("listing a charge's refunds needs STRIPE_SECRET_KEY");
    refunds = [];
    for await (const r of stripe.refunds.list({ charge: charge.id, limit: 100 })) refunds.push(r);
  }
  refunds = refunds.filter((r) => r.status !== "failed" && r.status !== "canceled");
  const failed = await getAll<RefundFailure>(
    deps.kv,
    refunds.map((r) => stripeRefundFailedKey(r.id)),
  );
  return refunds
    .filter((_, i) => failed[i].value === null)
    .sort((a, b) => a.created - b.created || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/**
 * The share of a purchase's `credits` that `cents` of its `paid` cents stand for (all of it at
 * most), rounded down: refunds and disputes take the difference of cumulative shares, so partial
 * take-backs add up to exactly the whole.
 */
export const creditShare = (credits: bigint, paid: bigint, cents: bigint) =>
  credits * (cents < paid ? cents : paid) / paid;

/**
 * The credited purchase a refund (or dispute) of `paymentIntent` takes back from; "not_credited"
 * when its Checkout Session was rejected (nothing was ever granted); null when the payment is not
 * the router's (`ours` false: no account in its metadata). Throws `RetryLater` while the purchase
 * of a payment of ours has not been credited yet: Stripe delivers again, the purchase comes first.
 */
export async function creditedPayment(
  deps: StripeDeps,
  paymentIntent: string | null,
  ours: () => boolean | Promise<boolean>,
  what: string,
): Promise<StripePayment | "not_credited" | null> {
  const payment = paymentIntent
    ? (await deps.kv.get<StripePayment>(stripePaymentKey(paymentIntent))).value
    : null;
  if (payment) {
    const credited = await deps.kv.get(onceKey(payment.account_id, payment.session_id));
    if (credited.value === null) {
      throw new RetryLater(`The ${what} payment has not been credited yet`);
    }
    return payment;
  }
  if (paymentIntent) {
    const rejected = (await deps.kv.get<StripeRejection>(stripeRejectedKey(paymentIntent))).value;
    if (rejected) {
      deps.log("warn", `stripe ${what} payment was never credited`, {
        payment_intent: paymentIntent,
        session_id: rejected.session_id,
        reason: rejected.reason,
      });
      return "not_credited";
    }
  }
  if (await ours()) throw new RetryLater(`The ${what} payment has not been credited yet`);
  return null;
}

/**
 * The credit the payment's disputes hold taken back (withdrawn and not reinstated), all of them
 * but `except`.
 */
export async function disputedCredit(
  deps: StripeDeps,
  paymentIntent: string,
  payment: StripePayment,
  except?: string,
): Promise<bigint> {
  const ids: string[] = [];
  for await (
    const e of deps.kv.list<StripeDispute>({ prefix: stripeDisputesPrefix(paymentIntent) })
  ) {
    const id = disputeIdOfKey(e.key);
    if (id !== except) ids.push(id);
  }
  if (ids.length === 0) return 0n;
  const entries = await getAll<unknown>(
    deps.kv,
    ids.flatMap((id) => [
      onceKey(payment.account_id, id),
      onceKey(payment.account_id, `${id}/reinstated`),
    ]),
  );
  let held = 0n;
  for (let i = 0; i < ids.length; i++) {
    const taken = entries[2 * i].value as DisputeTakeBack | null;
    if (taken && "entry_id" in taken && entries[2 * i + 1].value === null) held += taken.amount;
  }
  return held;
}
