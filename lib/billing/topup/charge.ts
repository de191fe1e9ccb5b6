/**
 * Auto top-up's charge. A crossing (lib/billing/spend_watch.ts) asks `startTopUp`, whose gate is
 * one check-and-set of the account's auto top-up record: enabled, nothing in flight, the balance
 * (read afresh, leases counted in) below the threshold, some credit since the last failure, room
 * under the month's cap; passing it marks the attempt in flight, so two processes crossing at once
 * start one. The attempt charges the saved card off-session (a PaymentIntent confirmed at once,
 * with an idempotency key per attempt; development billing simulates it), and its end is recorded
 * once: the credit by the once-key of the PaymentIntent (the synchronous answer and the
 * `payment_intent.succeeded` webhook may both report it), the outcome by clearing `in_flight` only
 * where it still names the attempt. A failure leaves the balance as it was, emits
 * `auto_topup.failed`, and the third in a row turns auto top-up off.
 */
import Stripe from "stripe";
import type { SpendDeps } from "../spend_deps.ts";
import {
  onceKey,
  paymentMethodKey,
  stripePaymentKey,
  TOPUP_FLIGHT_PREFIX,
  topupFlightKey,
} from "../../kv/schema.ts";
import { commitRetrying } from "../../kv/util.ts";
import { formatUsd } from "../../money.ts";
import { newId } from "../../ids.ts";
import { accountEvent, emitEvent } from "../../webhooks/events.ts";
import { getAccount } from "../accounts.ts";
import { getBalanceView } from "../views.ts";
import { customerForAccount, keptReceipt, receiptUrl } from "../stripe/checkout.ts";
import { NANOS_PER_CENT } from "../stripe/client.ts";
import type { StripePayment } from "../stripe/types.ts";
import type { CreditResult } from "../ops.ts";
import {
  type AutoTopup,
  creditTotal,
  getAutoTopup,
  MAX_FAILURES,
  MIN_TOPUP,
  rollMonth,
  type SavedCard,
  type TopupAttempt,
} from "./records.ts";
import { cardFromSetupSession, TEST_CARDS, type TestCard } from "./payment_method.ts";

/** An attempt still in flight this long (its process died, or Stripe did not answer) is resumed. */
export const STALE_MS = 2 * 60_000;
/** An attempt Stripe never answered for this long is given up as failed (`no_answer`). */
const GIVE_UP_MS = 60 * 60_000;

/** What a Stripe event did to the saved card or auto top-up (see `handleTopupEvent`). */
export const TOPUP_EVENT_RESULTS = [
  "topup_credited",
  "topup_already_credited",
  "topup_failed",
  "topup_already_failed",
  "payment_method_saved",
  "payment_method_kept",
  "ignored",
] as const;
export type TopupEventResult = typeof TOPUP_EVENT_RESULTS[number];

/**
 * Starts a top-up of the account if the gate lets one through, and runs it to its end (or leaves
 * it processing, for its webhook). Resolves with the attempt started, or null.
 */
export async function startTopUp(svc: SpendDeps, accountId: string): Promise<TopupAttempt | null> {
  const attempt = await claim(svc, accountId);
  if (attempt) await runAttempt(svc, accountId, attempt);
  return attempt;
}

/** The gate: marks an attempt in flight when every condition holds, in one check-and-set. */
async function claim(svc: SpendDeps, accountId: string): Promise<TopupAttempt | null> {
  const { kv } = svc;
  for (let i = 0; i < 20; i++) {
    // The record first: a top-up that ended before it was read has its credit in the balance
    // read after it, so a stale crossing never starts a second one.
    const entry = await getAutoTopup(kv, accountId);
    const s = entry.value;
    if (!s?.enabled || s.in_flight) return null;
    const [cardEntry, credit, balance] = await Promise.all([
      kv.get<SavedCard>(paymentMethodKey(accountId)),
      creditTotal(kv, accountId),
      getBalanceView(kv, accountId),
    ]);
    const card = cardEntry.value;
    if (!card || balance.balance >= s.threshold) return null;
    // Nothing credited since the last failure: the balance never rose, so no new crossing.
    if (s.wait_credit !== null && s.wait_credit === credit) return null;
    const now = svc.now();
    const r = rollMonth(s, now);
    const room = r.monthly_cap - r.this_month;
    const amount = s.amount < room ? s.amount : room;
    if (amount < MIN_TOPUP) {
      svc.log("info", "auto top-up skipped: the monthly cap is reached", {
        account_id: accountId,
        this_month: formatUsd(r.this_month),
      });
      return null;
    }
    const attempt: TopupAttempt = {
      id: newId("topup", now),
      amount,
      started_ms: now,
      card: card.id,
      payment_intent: null,
    };
    const res = await commitRetrying(
      // The card checked too: one replaced meanwhile is the one to charge.
      kv.atomic().check(entry, cardEntry)
        .set(entry.key, { ...r, in_flight: attempt })
        .set(topupFlightKey(now, accountId), attempt.id),
    );
    if (res.ok) return attempt;
  }
  return null;
}

/** Charges the attempt's card (or simulates it) and records the outcome. */
async function runAttempt(svc: SpendDeps, accountId: string, a: TopupAttempt): Promise<void> {
  if (svc.config.billingMode === "development") {
    const failure = TEST_CARDS[a.card as TestCard]?.failure ?? null;
    if (failure) {
      await finishAttempt(svc, accountId, a.id, {
        ok: false,
        reason: failure,
        paymentIntent: a.id,
      });
      return;
    }
    await creditTopUp(svc, accountId, {
      amount: a.amount,
      reference: a.id,
      description: "Auto top-up (development: no payment)",
    });
    await finishAttempt(svc, accountId, a.id, { ok: true, amount: a.amount, paymentIntent: a.id });
    return;
  }
  const stripe = svc.stripe!;
  let pi: Stripe.PaymentIntent;
  try {
    const customer = await customerForAccount(svc, stripe, accountId);
    pi = await stripe.paymentIntents.create({
      amount: Number(a.amount / NANOS_PER_CENT),
      currency: "usd",
      customer,
      payment_method: a.card,
      off_session: true,
      confirm: true,
      description: "Auto top-up of API credit",
      metadata: { account_id: accountId, purpose: "auto_topup", topup_id: a.id },
      expand: ["latest_charge"],
    }, { idempotencyKey: `topup-${a.id}` });
  } catch (e) {
    // A card error (declined, authentication needed) or a card or customer Stripe no longer
    // knows: the attempt failed. Anything else (Stripe unreachable) leaves it in flight, resumed
    // with the same idempotency key by the sweep.
    if (
      !(e instanceof Stripe.errors.StripeCardError) &&
      !(e instanceof Stripe.errors.StripeInvalidRequestError)
    ) throw e;
    const failed = e.payment_intent ?? null;
    if (failed?.status === "requires_action") await cancelIntent(svc, stripe, failed.id);
    await finishAttempt(svc, accountId, a.id, {
      ok: false,
      reason: e.code === "authentication_required" ? "requires_action" : e.code ?? e.type,
      paymentIntent: failed?.id ?? null,
    });
    return;
  }
  await settleIntent(svc, stripe, accountId, a, pi);
}

/** Records what a PaymentIntent of an attempt came to: paid, failed, or still processing. */
async function settleIntent(
  svc: SpendDeps,
  stripe: Stripe,
  accountId: string,
  a: TopupAttempt,
  pi: Stripe.PaymentIntent,
): Promise<void> {
  switch (pi.status) {
    case "succeeded":
      await intentSucceeded(svc, pi);
      return;
    case "requires_action":
      // Off-session no one can authenticate it: canceled, so that it never completes later.
      await cancelIntent(svc, stripe, pi.id);
      await finishAttempt(svc, accountId, a.id, {
        ok: false,
        reason: "requires_action",
        paymentIntent: pi.id,
      });
      return;
    case "requires_payment_method":
    case "canceled":
      await finishAttempt(svc, accountId, a.id, {
        ok: false,
        reason: failureReason(pi),
        paymentIntent: pi.id,
      });
      return;
    default:
      // Processing: its webhook (or the sweep) ends it.
      if (a.payment_intent !== pi.id) await noteIntent(svc, accountId, a.id, pi.id);
  }
}

const failureReason = (pi: Stripe.PaymentIntent) => {
  const code = pi.last_payment_error?.code;
  if (code === "authentication_required" || pi.status === "requires_action") {
    return "requires_action";
  }
  return code ?? (pi.status === "canceled" ? "canceled" : "payment_failed");
};

async function cancelIntent(svc: SpendDeps, stripe: Stripe, id: string) {
  try {
    await stripe.paymentIntents.cancel(id, {}, { idempotencyKey: `topup-cancel-${id}` });
  } catch (e) {
    svc.log("warn", "auto top-up payment not canceled", {
      payment_intent: id,
      type: e instanceof Stripe.errors.StripeError ? e.type : "unknown",
    });
  }
}

/** Keeps the PaymentIntent of a processing attempt, for the sweep to look it up. */
async function noteIntent(svc: SpendDeps, accountId: string, topupId: string, pi: string) {
  for (let i = 0; i < 20; i++) {
    const e = await getAutoTopup(svc.kv, accountId);
    if (e.value?.in_flight?.id !== topupId) return;
    const next = { ...e.value, in_flight: { ...e.value.in_flight, payment_intent: pi } };
    if ((await commitRetrying(svc.kv.atomic().check(e).set(e.key, next))).ok) return;
  }
}

/** Credits a paid top-up once (its reference's once-key), emitting `auto_topup.succeeded`. */
function creditTopUp(
  svc: SpendDeps,
  accountId: string,
  opts: { amount: bigint; reference: string; description: string; receipt?: string | null },
): Promise<CreditResult> {
  return svc.actors.submit(accountId, {
    kind: "credit",
    type: "purchase",
    amount: opts.amount,
    description: opts.description,
    reference: opts.reference,
    once: { key: onceKey(accountId, opts.reference), value: (e) => e.id },
    receipt_url: opts.receipt ?? undefined,
    event: (e) =>
      accountEvent(accountId, "auto_topup.succeeded", {
        amount: formatUsd(opts.amount),
        payment_intent: opts.reference,
      }, Date.parse(e.created_at)),
  });
}

type Outcome =
  | { ok: true; amount: bigint; paymentIntent: string }
  | { ok: false; reason: string; paymentIntent: string | null };

/**
 * Ends the attempt `topupId` if it is still the one in flight (false otherwise: it ended
 * already). A success adds to the month's total and clears the failures; a failure counts one,
 * emits `auto_topup.failed` in the same atomic, waits for a credit before the next try, and at
 * MAX_FAILURES turns auto top-up off.
 */
export async function finishAttempt(
  svc: SpendDeps,
  accountId: string,
  topupId: string,
  o: Outcome,
): Promise<boolean> {
  const { kv } = svc;
  for (let i = 0; i < 20; i++) {
    const entry = await getAutoTopup(kv, accountId);
    const s = entry.value;
    const a = s?.in_flight;
    if (!s || !a || a.id !== topupId) return false;
    const now = svc.now();
    const r = rollMonth(s, now);
    const at = new Date(now).toISOString();
    const atomic = kv.atomic().check(entry).delete(topupFlightKey(a.started_ms, accountId));
    let next: AutoTopup;
    if (o.ok) {
      next = {
        ...r,
        in_flight: null,
        this_month: r.this_month + o.amount,
        failures: 0,
        wait_credit: null,
        last: {
          id: a.id,
          outcome: "succeeded",
          amount: o.amount,
          payment_intent: o.paymentIntent,
          reason: null,
          at,
        },
      };
    } else {
      const failures = s.failures + 1;
      const off = failures >= MAX_FAILURES;
      next = {
        ...r,
        in_flight: null,
        enabled: off ? false : s.enabled,
        failures,
        wait_credit: await creditTotal(kv, accountId),
        last: {
          id: a.id,
          outcome: "failed",
          amount: a.amount,
          payment_intent: o.paymentIntent,
          reason: o.reason,
          at,
        },
      };
      emitEvent(
        atomic,
        accountEvent(accountId, "auto_topup.failed", {
          amount: formatUsd(a.amount),
          payment_intent: o.paymentIntent,
          reason: o.reason,
          failures,
          disabled: off,
        }, now),
        svc.config.outboxDelivery,
      );
    }
    if ((await commitRetrying(atomic.set(entry.key, next))).ok) {
      svc.log(o.ok ? "info" : "warn", `auto top-up ${o.ok ? "succeeded" : "failed"}`, {
        account_id: accountId,
        topup_id: topupId,
        ...(o.ok ? {} : { reason: o.reason, failures: next.failures, enabled: next.enabled }),
      });
      return true;
    }
  }
  throw new Error("the auto top-up record changed too often to record an outcome");
}

const topupOf = (pi: Stripe.PaymentIntent) =>
  pi.metadata?.purpose === "auto_topup" && pi.metadata.account_id && pi.metadata.topup_id
    ? { accountId: pi.metadata.account_id, topupId: pi.metadata.topup_id }
    : null;

/**
 * A paid top-up PaymentIntent (the synchronous answer, or `payment_intent.succeeded`): credited
 * once, recorded as a payment so that its refunds and disputes take the credit back, and its
 * attempt ended. Null for a PaymentIntent that is not a top-up.
 */
async function intentSucceeded(
  svc: SpendDeps,
  pi: Stripe.PaymentIntent,
): Promise<TopupEventResult | null> {
  const t = topupOf(pi);
  if (!t) return null;
  const cents = pi.amount_received || pi.amount;
  if (pi.currency !== "usd" || cents <= 0 || !await getAccount(svc.kv, t.accountId)) {
    svc.log("error", "auto top-up payment not credited", { payment_intent: pi.id });
    return null;
  }
  const amount = BigInt(cents) * NANOS_PER_CENT;
  const payment: StripePayment = {
    account_id: t.accountId,
    session_id: pi.id,
    name: "Auto top-up",
    amount: cents,
    credits: amount,
  };
  await svc.kv.set(stripePaymentKey(pi.id), payment);
  const charge = pi.latest_charge;
  const once = await svc.kv.get(onceKey(t.accountId, pi.id));
  const receipt = typeof charge === "object" && charge !== null
    ? charge.receipt_url
    : once.value === null
    ? await receiptUrl(svc, pi.id)
    : null;
  const r = await creditTopUp(svc, t.accountId, {
    amount,
    reference: pi.id,
    description: "Auto top-up",
    receipt: keptReceipt(receipt),
  });
  await finishAttempt(svc, t.accountId, t.topupId, { ok: true, amount, paymentIntent: pi.id });
  return r.replayed ? "topup_already_credited" : "topup_credited";
}

/**
 * The Stripe events of the saved card and auto top-up: a completed `setup` Checkout Session saves
 * its card, `payment_intent.succeeded` credits a top-up once, `payment_intent.payment_failed`
 * records its failure once. Null for any other event (a purchase's session, a PaymentIntent that
 * is not a top-up): the purchase handlers take it.
 */
export async function handleTopupEvent(
  svc: SpendDeps,
  event: Stripe.Event,
): Promise<TopupEventResult | null> {
  if (event.type === "checkout.session.completed" && event.data.object.mode === "setup") {
    return await cardFromSetupSession(svc, event.data.object);
  }
  if (event.type === "payment_intent.succeeded") {
    return await intentSucceeded(svc, event.data.object);
  }
  if (event.type !== "payment_intent.payment_failed") return null;
  const pi = event.data.object;
  const t = topupOf(pi);
  if (!t) return null;
  const done = await finishAttempt(svc, t.accountId, t.topupId, {
    ok: false,
    reason: failureReason(pi),
    paymentIntent: pi.id,
  });
  return done ? "topup_failed" : "topup_already_failed";
}

/**
 * Resumes attempts in flight for longer than STALE_MS (their process died, or Stripe did not
 * answer): run again with the same idempotency key (Stripe answers as it did), or, with a
 * PaymentIntent known, looked up; given up as `no_answer` after GIVE_UP_MS. `tried` remembers
 * what this process resumed when, so each is tried once per STALE_MS.
 */
export async function resumeStale(
  svc: SpendDeps,
  tried: Map<string, number>,
): Promise<void> {
  const now = svc.now();
  const end = [...TOPUP_FLIGHT_PREFIX, now - STALE_MS];
  const stale: { accountId: string; id: string; key: Deno.KvKey; stamp: string }[] = [];
  for await (
    const e of svc.kv.list<string>({ prefix: TOPUP_FLIGHT_PREFIX, end }, { limit: 100 })
  ) {
    stale.push({ accountId: e.key[2] as string, id: e.value, key: e.key, stamp: e.versionstamp });
  }
  for (const f of stale) {
    if ((tried.get(f.id) ?? -Infinity) > now - STALE_MS) continue;
    tried.set(f.id, now);
    const a = (await getAutoTopup(svc.kv, f.accountId)).value?.in_flight;
    if (a?.id !== f.id) {
      // Ended, its index entry left by a crash in between.
      await svc.kv.atomic().check({ key: f.key, versionstamp: f.stamp }).delete(f.key).commit();
      continue;
    }
    try {
      if (now - a.started_ms > GIVE_UP_MS) {
        await finishAttempt(svc, f.accountId, a.id, {
          ok: false,
          reason: "no_answer",
          paymentIntent: a.payment_intent,
        });
      } else if (a.payment_intent && svc.config.billingMode === "production") {
        const stripe = svc.stripe!;
        const pi = await stripe.paymentIntents.retrieve(a.payment_intent, {
          expand: ["latest_charge"],
        });
        await settleIntent(svc, stripe, f.accountId, a, pi);
      } else await runAttempt(svc, f.accountId, a);
    } catch (e) {
      svc.log("warn", "auto top-up not resumed", { topup_id: a.id, error: String(e) });
    }
  }
  if (tried.size > 1000) tried.clear();
}
