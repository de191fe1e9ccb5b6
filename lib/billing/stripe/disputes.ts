/**
 * Disputes (chargebacks): funds withdrawn take back the disputed share of the purchase's credit
 * once per dispute; funds reinstated give back exactly what was taken, once.
 */
import { creditEvent } from "../../webhooks/events.ts";
import type Stripe from "stripe";
import type { LedgerEntry } from "../types.ts";
import type {
  DisputeTakeBack,
  EventResult,
  StripeDeps,
  StripeDispute,
  StripePayment,
} from "./types.ts";
import { onceKey, stripeDisputeKey } from "../../kv/schema.ts";
import { creditedPayment, creditShare, disputedCredit, idOf, refundsOf } from "./payments.ts";

/**
 * A dispute (chargeback) event. Funds withdrawn (`charge.dispute.funds_withdrawn`, or any dispute
 * event whose balance transactions show the withdrawal) take back the disputed share of the
 * purchase's credit once per dispute, as a negative adjustment referencing the dispute. Funds
 * reinstated to a dispute not lost (`charge.dispute.funds_reinstated`, or a `won` dispute showing
 * the reinstatement) give back exactly what was taken, once; reinstated before the withdrawal
 * arrives, the take-back's once-key is claimed so it never applies. A dispute lost after a partial
 * refund has the refunded part reinstated: its take-back never included that part, and stands.
 * Anything else (an inquiry, a dispute opened with no funds withdrawn, `closed` after the funds
 * moved) changes nothing.
 */
export async function disputeEvent(
  deps: StripeDeps,
  type: string,
  dispute: Stripe.Dispute,
): Promise<EventResult> {
  const txs = dispute.balance_transactions ?? [];
  const reinstated = dispute.status !== "lost" &&
    (type === "charge.dispute.funds_reinstated" ||
      (dispute.status === "won" && txs.some((t) => t.amount > 0)));
  const withdrawn = type === "charge.dispute.funds_withdrawn" || txs.some((t) => t.amount < 0);
  if (!reinstated && !withdrawn) return "ignored";

  const chargeId = idOf(dispute.charge);
  let charge: Stripe.Charge | null = null;
  const fetchCharge = async () => {
    if (charge) return charge;
    const stripe = deps.stripe;
    if (!stripe || !chargeId) throw new Error("reading a disputed charge needs STRIPE_SECRET_KEY");
    return charge = await stripe.charges.retrieve(chargeId);
  };
  // Older API versions' disputes name the charge only.
  const paymentIntent = idOf(dispute.payment_intent) ??
    (chargeId ? idOf((await fetchCharge()).payment_intent) : null);
  const payment = await creditedPayment(
    deps,
    paymentIntent,
    async () => chargeId !== null && Boolean((await fetchCharge()).metadata?.account_id),
    "disputed",
  );
  if (payment === null) return "ignored";
  if (payment === "not_credited") return "not_credited";
  return reinstated
    ? await disputeReinstated(deps, dispute, payment)
    : await disputeWithdrawn(deps, dispute, paymentIntent!, chargeId, payment);
}

async function disputeWithdrawn(
  deps: StripeDeps,
  dispute: Stripe.Dispute,
  paymentIntent: string,
  chargeId: string | null,
  payment: StripePayment,
): Promise<EventResult> {
  const amount = BigInt(payment.amount);
  if (amount <= 0n) return "ignored";
  const key = onceKey(payment.account_id, dispute.id);
  if ((await deps.kv.get(key)).value !== null) return "already_disputed";
  // Written before the take-back, so that the payment's refunds count it.
  const record: StripeDispute = {
    account_id: payment.account_id,
    charge: chargeId,
    amount: dispute.amount,
    withdrawn_at: new Date(deps.now()).toISOString(),
  };
  const recordKey = stripeDisputeKey(paymentIntent, dispute.id);
  await deps.kv.atomic().check({ key: recordKey, versionstamp: null }).set(recordKey, record)
    .commit();
  // The disputed cents come after the charge's refunds (a fresh listing), shared out as refunds
  // are: the cumulative share of refunds and dispute, less the refunds' own. What the refunds and
  // the other disputes took is never taken twice.
  const share = (cents: bigint) => creditShare(payment.credits, amount, cents);
  const refunded = chargeId
    ? (await refundsOf(deps, { id: chargeId })).reduce((n, r) => n + BigInt(r.amount), 0n)
    : 0n;
  let take = share(refunded + BigInt(dispute.amount)) - share(refunded);
  const left = payment.credits - share(refunded) -
    await disputedCredit(deps, paymentIntent, payment, dispute.id);
  if (take > left) take = left;
  if (take <= 0n) {
    const claim = await deps.kv.atomic().check({ key, versionstamp: null })
      .set(key, { nothing_taken: true } satisfies DisputeTakeBack).commit();
    return claim.ok ? "nothing_to_take" : "already_disputed";
  }
  const r = await deps.actors.submit(payment.account_id, {
    kind: "credit",
    type: "adjustment",
    amount: -take,
    description: `Stripe dispute ${dispute.id} (${dispute.reason}): ${payment.name} package`,
    reference: dispute.id,
    event: creditEvent(payment.account_id, "credits.refunded", deps.entryData),
    // A reinstatement recorded meanwhile holds this key too, so the take-back replays instead.
    once: {
      key,
      value: (e: LedgerEntry): DisputeTakeBack => ({ entry_id: e.id, amount: -e.amount }),
    },
  });
  return r.replayed ? "already_disputed" : "disputed";
}

async function disputeReinstated(
  deps: StripeDeps,
  dispute: Stripe.Dispute,
  payment: StripePayment,
): Promise<EventResult> {
  const key = onceKey(payment.account_id, dispute.id);
  let taken: Deno.KvEntryMaybe<DisputeTakeBack>;
  for (;;) {
    taken = await deps.kv.get<DisputeTakeBack>(key);
    if (taken.value !== null) break;
    // Nothing taken back: the take-back's own once-key says it never may be.
    const claim = await deps.kv.atomic().check(taken)
      .set(key, { reinstated_before_take_back: true } satisfies DisputeTakeBack).commit();
    if (claim.ok) return "ignored";
  }
  if (!("entry_id" in taken.value)) return "ignored";
  const r = await deps.actors.submit(payment.account_id, {
    kind: "credit",
    type: "adjustment",
    amount: taken.value.amount,
    description:
      `Stripe dispute ${dispute.id} ${dispute.status}: ${payment.name} package credit returned`,
    reference: dispute.id,
    once: { key: onceKey(payment.account_id, `${dispute.id}/reinstated`), value: (e) => e.id },
  });
  return r.replayed ? "already_reinstated" : "dispute_reinstated";
}
