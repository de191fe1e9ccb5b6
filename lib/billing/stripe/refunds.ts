/**
 * Refunds: a refunded charge takes back the refunded share of its purchase's credit once per
 * refund; a refund Stripe reports failed or canceled gives back what its take-back took, once.
 */
import type Stripe from "stripe";
import type { LedgerEntry } from "../types.ts";
import type {
  EventResult,
  RefundFailure,
  RefundTakeBack,
  StripeDeps,
  StripePayment,
} from "./types.ts";
import { ledgerPrefix, onceKey, stripePaymentKey, stripeRefundFailedKey } from "../../kv/schema.ts";
import { creditEvent } from "../../webhooks/events.ts";
import { creditedPayment, creditShare, disputedCredit, idOf, refundsOf } from "./payments.ts";

/** How long a failed refund is remembered: far beyond Stripe's three days of redelivery. */
const REFUND_FAILURE_TTL_MS = 90 * 86_400_000;

export async function refundCharge(deps: StripeDeps, charge: Stripe.Charge) {
  const paymentIntent = idOf(charge.payment_intent);
  const payment = await creditedPayment(
    deps,
    paymentIntent,
    () => Boolean(charge.metadata?.account_id),
    "refunded",
  );
  if (payment === null) return "ignored";
  if (payment === "not_credited") return "not_credited";
  const amount = BigInt(charge.amount);
  if (amount <= 0n) return "ignored";
  // The credit taken back is the refunded share of the credit granted. Each refund takes the
  // difference of the cumulative shares, so partial refunds add up to exactly the whole; what
  // the payment's disputes hold taken back is off limits, so that refunds and disputes together
  // never take back more than was credited.
  const disputed = paymentIntent ? await disputedCredit(deps, paymentIntent, payment) : 0n;
  const limit = payment.credits - disputed;
  const share = (cents: bigint) => {
    const s = creditShare(payment.credits, amount, cents);
    return s < limit ? s : limit;
  };
  const refunds = await refundsOf(deps, charge);
  let before = 0n;
  let changed = false;
  for (const refund of refunds) {
    const after = before + BigInt(refund.amount);
    const take = share(after) - share(before);
    before = after;
    if (take <= 0n) continue;
    const r = await deps.actors.submit(payment.account_id, {
      kind: "credit",
      type: "adjustment",
      amount: -take,
      description: `Stripe refund ${refund.id}: ${payment.name} package`,
      reference: charge.id,
      event: creditEvent(payment.account_id, "credits.refunded", deps.entryData),
      // A failure recorded meanwhile holds this key too, so the take-back replays instead.
      once: {
        key: onceKey(payment.account_id, refund.id),
        value: (e: LedgerEntry): RefundTakeBack => ({ entry_id: e.id, amount: -e.amount }),
      },
    });
    if (!r.replayed) changed = true;
  }
  return changed ? "refunded" : "already_refunded";
}

/**
 * A refund Stripe reports failed or canceled (the money never left): the credit its take-back
 * removed comes back once, as a positive adjustment referencing the refund. The failure is
 * recorded first, and a refund not yet taken back has its once-key claimed, so a take-back
 * delivered later (or at the same moment) replays instead of applying.
 */
export async function refundFailed(deps: StripeDeps, refund: Stripe.Refund): Promise<EventResult> {
  // A canceled refund (one awaiting the customer's details, then canceled) is undone like a
  // failed one: the charge's other refunds already count neither (`refundsOf`).
  if (refund.status !== "failed" && refund.status !== "canceled") return "ignored";
  const failure: RefundFailure = {
    charge: idOf(refund.charge),
    failed_at: new Date(deps.now()).toISOString(),
  };
  // Also covers a payment not known yet: its refunds are checked against this before any take-back.
  // Written once: a redelivered failure finds it there and leaves it be.
  const failedKey = stripeRefundFailedKey(refund.id);
  await deps.kv.atomic().check({ key: failedKey, versionstamp: null })
    .set(failedKey, failure, { expireIn: REFUND_FAILURE_TTL_MS }).commit();
  const paymentIntent = idOf(refund.payment_intent);
  const payment = paymentIntent
    ? (await deps.kv.get<StripePayment>(stripePaymentKey(paymentIntent))).value
    : null;
  if (!payment) return "ignored";
  const key = onceKey(payment.account_id, refund.id);
  let taken: Deno.KvEntryMaybe<RefundTakeBack>;
  for (;;) {
    taken = await deps.kv.get<RefundTakeBack>(key);
    if (taken.value !== null) break;
    // Nothing taken back: the take-back's own once-key says it never may be.
    const claim = await deps.kv.atomic().check(taken)
      .set(key, { failed_before_take_back: true } satisfies RefundTakeBack).commit();
    if (claim.ok) return "ignored";
  }
  const amount = await takenBack(deps.kv, payment.account_id, taken.value);
  if (amount === null) return "ignored";
  const r = await deps.actors.submit(payment.account_id, {
    kind: "credit",
    type: "adjustment",
    amount,
    description:
      `Stripe refund ${refund.id} ${refund.status}: ${payment.name} package credit returned`,
    reference: refund.id,
    once: { key: onceKey(payment.account_id, `${refund.id}/failed`), value: (e) => e.id },
  });
  return r.replayed ? "already_reversed" : "refund_reversed";
}

/** The credit a refund's take-back removed (positive), or null when none was taken. */
async function takenBack(
  kv: Deno.Kv,
  accountId: string,
  stored: RefundTakeBack,
): Promise<bigint | null> {
  if (typeof stored === "object") return "entry_id" in stored ? stored.amount : null;
  // An older take-back stored its entry id alone: find the entry in the account's ledger.
  for await (
    const e of kv.list<LedgerEntry>({ prefix: ledgerPrefix(accountId) }, { reverse: true })
  ) {
    if (e.value.id === stored) return -e.value.amount;
  }
  return null;
}
