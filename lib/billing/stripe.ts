/**
 * Buying credit through Stripe: the client, one Stripe customer per account, Checkout Sessions,
 * and the webhook events that grant (and, on refund or a dispute's withdrawal, take back; on a
 * failed refund or a won dispute, give back) credit exactly once.
 */
import Stripe from "stripe";
import type { Config } from "../config.ts";
import type { Services } from "../services.ts";
import type { CreditPackage } from "./packages.ts";
import type { LedgerEntry } from "./types.ts";
import { getAccount } from "./accounts.ts";
import { formatUsd } from "../money.ts";
import { hashSecret } from "../crypto.ts";
import {
  disputeIdOfKey,
  ledgerPrefix,
  onceKey,
  stripeCheckoutKey,
  stripeCustomerKey,
  stripeDisputeKey,
  stripeDisputesPrefix,
  stripePaymentKey,
  stripeRefundFailedKey,
  stripeRejectedKey,
} from "../kv/schema.ts";
import { getAll } from "../kv/util.ts";
import { creditEvent } from "../webhooks/events.ts";
import { ledgerJson } from "../http/presenters.ts";
import { RetryLater } from "../errors.ts";

/** Nano-USD in one US cent: Stripe amounts are integer cents. */
export const NANOS_PER_CENT = 10_000_000n;
/** How old a webhook signature may be, in seconds (Stripe's own default). */
export const WEBHOOK_TOLERANCE_S = 300;
/** Where Checkout sends the customer back to, below `PUBLIC_URL` (or the request origin). */
export const BILLING_PAGE = "/dashboard/settings/billing";

/** What a Checkout Session was created to sell, stored when it is created. */
export interface CheckoutRecord {
  account_id: string;
  package_id: string;
  name: string;
  /** nano-USD, whole cents. */
  price: bigint;
  /** nano-USD granted when paid. */
  credits: bigint;
  created_at: string;
}

/** A credited payment: how a later refund of its charge finds the account and the credit. */
export interface StripePayment {
  account_id: string;
  session_id: string;
  name: string;
  /** What was paid, in cents. */
  amount: number;
  /** nano-USD granted for it. */
  credits: bigint;
}

/**
 * What a refund's once-key holds: the take-back's ledger entry and amount (older take-backs stored
 * the entry id alone), or the mark that the refund failed before anything was taken back.
 */
export type RefundTakeBack =
  | { entry_id: string; amount: bigint }
  | string
  | { failed_before_take_back: true };

/** A dispute whose funds were withdrawn from a credited payment (see `stripeDisputeKey`). */
export interface StripeDispute {
  account_id: string;
  charge: string | null;
  /** The disputed amount, in the charge's cents. */
  amount: number;
  withdrawn_at: string;
}

/**
 * What a dispute's once-key holds: the take-back's ledger entry and amount; the mark that nothing
 * was left to take (refunds and other disputes took the whole purchase); or the mark that the
 * funds were reinstated before anything was taken back.
 */
export type DisputeTakeBack =
  | { entry_id: string; amount: bigint }
  | { nothing_taken: true }
  | { reinstated_before_take_back: true };

/** A refund Stripe reported failed, recorded so that no later delivery takes its credit back. */
export interface RefundFailure {
  charge: string | null;
  failed_at: string;
}

/**
 * A paid Checkout Session the router refused to credit (unknown account, amount not the price…),
 * recorded under its payment so that a refund of it is known to have nothing to take back.
 */
export interface StripeRejection {
  session_id: string;
  /** The account the session named (it may not exist). */
  account_id: string;
  reason: string;
  rejected_at: string;
}

/** How long a failed refund is remembered: far beyond Stripe's three days of redelivery. */
const REFUND_FAILURE_TTL_MS = 90 * 86_400_000;

const clients = new WeakMap<Config, Stripe>();

/** The Stripe client options for a configuration: `STRIPE_API_BASE` becomes host/port/protocol. */
export function stripeOptions(config: Config): Stripe.StripeConfig {
  const opts: Stripe.StripeConfig = {
    httpClient: Stripe.createFetchHttpClient(),
    // Every POST carries an idempotency key, so retrying a network failure cannot buy twice.
    maxNetworkRetries: 2,
    timeout: 20_000,
    telemetry: false,
  };
  if (config.stripeApiBase) {
    const u = new URL(config.stripeApiBase);
    const protocol = u.protocol === "http:" ? "http" : "https";
    opts.host = u.hostname;
    opts.port = u.port ? Number(u.port) : protocol === "http" ? 80 : 443;
    opts.protocol = protocol;
  }
  return opts;
}

/** The Stripe client of this configuration (one per config), or null without `STRIPE_SECRET_KEY`. */
export function stripeClient(config: Config): Stripe | null {
  if (!config.stripeSecretKey) return null;
  let client = clients.get(config);
  if (!client) {
    client = new Stripe(config.stripeSecretKey, stripeOptions(config));
    clients.set(config, client);
  }
  return client;
}

/**
 * The account's Stripe customer: created on the first checkout, stored, and reused after. With
 * `replacing`, that stored customer no longer exists in Stripe and a new one takes its place.
 */
export async function customerForAccount(
  svc: Services,
  stripe: Stripe,
  accountId: string,
  replacing?: string,
): Promise<string> {
  const key = stripeCustomerKey(accountId);
  const stored = await svc.kv.get<string>(key);
  if (stored.value && stored.value !== replacing) return stored.value;
  const account = await getAccount(svc.kv, accountId);
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
  const res = await svc.kv.atomic().check(stored).set(key, customer.id).commit();
  if (res.ok) return customer.id;
  return (await svc.kv.get<string>(key)).value ?? customer.id;
}

const isMissingCustomer = (e: unknown) =>
  e instanceof Stripe.errors.StripeInvalidRequestError && e.code === "resource_missing" &&
  e.param === "customer";

/**
 * Creates a Checkout Session selling `pkg` to the account and records what it sells; returns its
 * id and the URL to send the customer to. `idempotencyKey` makes a retried request return the
 * same session.
 */
export async function createCheckoutSession(
  svc: Services,
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
  let customer = await customerForAccount(svc, stripe, accountId);
  let session: Stripe.Checkout.Session;
  try {
    session = await create(customer, opts.idempotencyKey);
  } catch (e) {
    // The stored customer was deleted in Stripe: make a new one and try once more.
    if (!isMissingCustomer(e)) throw e;
    customer = await customerForAccount(svc, stripe, accountId, customer);
    session = await create(customer, `${opts.idempotencyKey}-${customer}`);
  }
  if (!session.url) throw new Error("Stripe returned a Checkout Session without a URL");
  const record: CheckoutRecord = {
    account_id: accountId,
    package_id: pkg.id,
    name: pkg.name,
    price: pkg.price,
    credits: pkg.credits,
    created_at: new Date(svc.now()).toISOString(),
  };
  await svc.kv.set(stripeCheckoutKey(session.id), record);
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

const cryptoProvider = Stripe.createSubtleCryptoProvider();

/**
 * The event, if `header` is a valid Stripe signature of `raw` by one of `secrets` (several while
 * one is rotated) and at most five minutes old; otherwise null.
 */
export async function verifyWebhook(
  raw: string,
  header: string | undefined,
  secrets: string[],
  nowMs: number,
): Promise<Stripe.Event | null> {
  if (!header) return null;
  for (const secret of secrets) {
    try {
      // Only the async variant works on Deno: SubtleCrypto has no synchronous HMAC.
      return await Stripe.webhooks.constructEventAsync(
        raw,
        header,
        secret,
        WEBHOOK_TOLERANCE_S,
        cryptoProvider,
        nowMs,
      );
    } catch (e) {
      if (!(e instanceof Stripe.errors.StripeSignatureVerificationError)) throw e;
    }
  }
  return null;
}

/** What an event did. */
export type EventResult =
  | "credited"
  | "already_credited"
  | "awaiting_payment"
  | "refunded"
  | "already_refunded"
  | "refund_reversed"
  | "already_reversed"
  | "disputed"
  | "already_disputed"
  | "dispute_reinstated"
  | "already_reinstated"
  | "nothing_to_take"
  | "not_credited"
  | "ignored"
  | "rejected";

/**
 * Applies one verified Stripe event. A paid Checkout Session grants its package's credit once per
 * session; a refunded charge takes back the refunded share once per refund; a refund that
 * failed gives back what it took, once; a dispute whose funds are withdrawn takes back the
 * disputed share once, and gives it back once if the funds are reinstated; anything else is
 * ignored. Throws `RetryLater` when the event must wait for another one.
 */
export async function handleStripeEvent(svc: Services, event: Stripe.Event): Promise<EventResult> {
  switch (event.type) {
    case "checkout.session.completed":
    case "checkout.session.async_payment_succeeded":
      return await creditSession(svc, event.data.object);
    case "charge.refunded":
      return await refundCharge(svc, event.data.object);
    // Which of these an endpoint receives depends on its API version and the payment method.
    case "charge.refund.updated":
    case "refund.updated":
    case "refund.failed":
      return await refundFailed(svc, event.data.object);
    case "charge.dispute.created":
    case "charge.dispute.updated":
    case "charge.dispute.funds_withdrawn":
    case "charge.dispute.funds_reinstated":
    case "charge.dispute.closed":
      return await disputeEvent(svc, event.type, event.data.object);
    default:
      return "ignored";
  }
}

const idOf = (v: string | { id: string } | null | undefined) =>
  typeof v === "string" ? v : v?.id ?? null;

async function creditSession(svc: Services, session: Stripe.Checkout.Session) {
  if (session.mode !== "payment") return "ignored";
  const accountId = session.metadata?.account_id ?? session.client_reference_id;
  // A session this router did not create (another product on the same Stripe account).
  if (!accountId) return "ignored";
  // An async method (bank debit) completes unpaid; its async_payment_succeeded grants the credit.
  if (session.payment_status !== "paid") return "awaiting_payment";
  const paymentIntent = idOf(session.payment_intent);
  const reject = async (reason: string) => {
    svc.log("error", "stripe checkout session not credited", {
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
        rejected_at: new Date(svc.now()).toISOString(),
      };
      await svc.kv.atomic().check({ key, versionstamp: null }).set(key, rejection).commit();
    }
    return "rejected" as const;
  };
  if (session.client_reference_id && session.client_reference_id !== accountId) {
    return await reject("client_reference_id and metadata name different accounts");
  }
  // What was sold is what the router recorded at creation; metadata is the fallback.
  const record = (await svc.kv.get<CheckoutRecord>(stripeCheckoutKey(session.id))).value;
  let sold: { name: string; price: bigint; credits: bigint };
  if (record) {
    if (record.account_id !== accountId) {
      return await reject("session record names another account");
    }
    sold = record;
  } else {
    const pkg = svc.config.packages.find((p) => p.id === session.metadata?.package_id);
    if (!pkg) return await reject("unknown package");
    sold = pkg;
  }
  if (session.currency !== "usd" || session.amount_total !== Number(sold.price / NANOS_PER_CENT)) {
    return await reject("the amount paid is not the package's price");
  }
  if (!await getAccount(svc.kv, accountId)) return await reject("unknown account");

  if (paymentIntent) {
    // Written before the credit, so every credited payment can be found by its refunds.
    const payment: StripePayment = {
      account_id: accountId,
      session_id: session.id,
      name: sold.name,
      amount: session.amount_total,
      credits: sold.credits,
    };
    await svc.kv.set(stripePaymentKey(paymentIntent), payment);
  }
  const once = onceKey(accountId, session.id);
  // Asked of Stripe before the first credit only: a redelivery replays the credit as it was.
  const receipt = paymentIntent && (await svc.kv.get(once)).value === null
    ? await receiptUrl(svc, paymentIntent)
    : null;
  const r = await svc.actors.submit(accountId, {
    kind: "credit",
    type: "purchase",
    amount: sold.credits,
    description: `Stripe Checkout: ${sold.name} package`,
    reference: session.id,
    once: { key: once, value: (e: LedgerEntry) => e.id },
    receipt_url: receipt ?? undefined,
    event: creditEvent(accountId, "credits.purchased", ledgerJson),
  });
  return r.replayed ? "already_credited" : "credited";
}

/**
 * The receipt of a payment (its charge's `receipt_url`), or null when Stripe has none or does not
 * answer within a few seconds: the credit does not wait on it. Only an https URL is kept (pages
 * show it as a link).
 */
async function receiptUrl(svc: Services, paymentIntent: string): Promise<string | null> {
  const stripe = stripeClient(svc.config);
  if (!stripe) return null;
  try {
    const pi = await stripe.paymentIntents.retrieve(
      paymentIntent,
      { expand: ["latest_charge"] },
      { timeout: 5000, maxNetworkRetries: 0 },
    );
    const charge = pi.latest_charge;
    const url = typeof charge === "object" && charge !== null ? charge.receipt_url : null;
    if (url && url.length <= 2048 && URL.parse(url)?.protocol === "https:") return url;
  } catch (e) {
    svc.log("warn", "stripe receipt not available", {
      payment_intent: paymentIntent,
      type: e instanceof Stripe.errors.StripeError ? e.type : "unknown",
    });
  }
  return null;
}

/**
 * The charge's refunds that count, oldest first: from the event when complete, else from the API;
 * none failed or canceled. A refund recorded as failed counts for nothing either, even where the
 * charge's list still shows it succeeded (an event built before the failure).
 */
async function refundsOf(
  svc: Services,
  charge: { id: string; refunds?: Stripe.Charge["refunds"] },
): Promise<Stripe.Refund[]> {
  let refunds: Stripe.Refund[];
  if (charge.refunds && !charge.refunds.has_more) refunds = [...charge.refunds.data];
  else {
    const stripe = stripeClient(svc.config);
    if (!stripe) throw new Error("listing a charge's refunds needs STRIPE_SECRET_KEY");
    refunds = [];
    for await (const r of stripe.refunds.list({ charge: charge.id, limit: 100 })) refunds.push(r);
  }
  refunds = refunds.filter((r) => r.status !== "failed" && r.status !== "canceled");
  const failed = await getAll<RefundFailure>(
    svc.kv,
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
const creditShare = (credits: bigint, paid: bigint, cents: bigint) =>
  credits * (cents < paid ? cents : paid) / paid;

/**
 * The credited purchase a refund (or dispute) of `paymentIntent` takes back from; "not_credited"
 * when its Checkout Session was rejected (nothing was ever granted); null when the payment is not
 * the router's (`ours` false: no account in its metadata). Throws `RetryLater` while the purchase
 * of a payment of ours has not been credited yet: Stripe delivers again, the purchase comes first.
 */
async function creditedPayment(
  svc: Services,
  paymentIntent: string | null,
  ours: () => boolean | Promise<boolean>,
  what: string,
): Promise<StripePayment | "not_credited" | null> {
  const payment = paymentIntent
    ? (await svc.kv.get<StripePayment>(stripePaymentKey(paymentIntent))).value
    : null;
  if (payment) {
    const credited = await svc.kv.get(onceKey(payment.account_id, payment.session_id));
    if (credited.value === null) {
      throw new RetryLater(`The ${what} payment has not been credited yet`);
    }
    return payment;
  }
  if (paymentIntent) {
    const rejected = (await svc.kv.get<StripeRejection>(stripeRejectedKey(paymentIntent))).value;
    if (rejected) {
      svc.log("warn", `stripe ${what} payment was never credited`, {
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

async function refundCharge(svc: Services, charge: Stripe.Charge) {
  const paymentIntent = idOf(charge.payment_intent);
  const payment = await creditedPayment(
    svc,
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
  const disputed = paymentIntent ? await disputedCredit(svc, paymentIntent, payment) : 0n;
  const limit = payment.credits - disputed;
  const share = (cents: bigint) => {
    const s = creditShare(payment.credits, amount, cents);
    return s < limit ? s : limit;
  };
  const refunds = await refundsOf(svc, charge);
  let before = 0n;
  let changed = false;
  for (const refund of refunds) {
    const after = before + BigInt(refund.amount);
    const take = share(after) - share(before);
    before = after;
    if (take <= 0n) continue;
    const r = await svc.actors.submit(payment.account_id, {
      kind: "credit",
      type: "adjustment",
      amount: -take,
      description: `Stripe refund ${refund.id}: ${payment.name} package`,
      reference: charge.id,
      event: creditEvent(payment.account_id, "credits.refunded", ledgerJson),
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
async function refundFailed(svc: Services, refund: Stripe.Refund): Promise<EventResult> {
  // A canceled refund (one awaiting the customer's details, then canceled) is undone like a
  // failed one: the charge's other refunds already count neither (`refundsOf`).
  if (refund.status !== "failed" && refund.status !== "canceled") return "ignored";
  const failure: RefundFailure = {
    charge: idOf(refund.charge),
    failed_at: new Date(svc.now()).toISOString(),
  };
  // Also covers a payment not known yet: its refunds are checked against this before any take-back.
  // Written once: a redelivered failure finds it there and leaves it be.
  const failedKey = stripeRefundFailedKey(refund.id);
  await svc.kv.atomic().check({ key: failedKey, versionstamp: null })
    .set(failedKey, failure, { expireIn: REFUND_FAILURE_TTL_MS }).commit();
  const paymentIntent = idOf(refund.payment_intent);
  const payment = paymentIntent
    ? (await svc.kv.get<StripePayment>(stripePaymentKey(paymentIntent))).value
    : null;
  if (!payment) return "ignored";
  const key = onceKey(payment.account_id, refund.id);
  let taken: Deno.KvEntryMaybe<RefundTakeBack>;
  for (;;) {
    taken = await svc.kv.get<RefundTakeBack>(key);
    if (taken.value !== null) break;
    // Nothing taken back: the take-back's own once-key says it never may be.
    const claim = await svc.kv.atomic().check(taken)
      .set(key, { failed_before_take_back: true } satisfies RefundTakeBack).commit();
    if (claim.ok) return "ignored";
  }
  const amount = await takenBack(svc.kv, payment.account_id, taken.value);
  if (amount === null) return "ignored";
  const r = await svc.actors.submit(payment.account_id, {
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

/**
 * The credit the payment's disputes hold taken back (withdrawn and not reinstated), all of them
 * but `except`.
 */
async function disputedCredit(
  svc: Services,
  paymentIntent: string,
  payment: StripePayment,
  except?: string,
): Promise<bigint> {
  const ids: string[] = [];
  for await (
    const e of svc.kv.list<StripeDispute>({ prefix: stripeDisputesPrefix(paymentIntent) })
  ) {
    const id = disputeIdOfKey(e.key);
    if (id !== except) ids.push(id);
  }
  if (ids.length === 0) return 0n;
  const entries = await getAll<unknown>(
    svc.kv,
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
async function disputeEvent(
  svc: Services,
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
    const stripe = stripeClient(svc.config);
    if (!stripe || !chargeId) throw new Error("reading a disputed charge needs STRIPE_SECRET_KEY");
    return charge = await stripe.charges.retrieve(chargeId);
  };
  // Older API versions' disputes name the charge only.
  const paymentIntent = idOf(dispute.payment_intent) ??
    (chargeId ? idOf((await fetchCharge()).payment_intent) : null);
  const payment = await creditedPayment(
    svc,
    paymentIntent,
    async () => chargeId !== null && Boolean((await fetchCharge()).metadata?.account_id),
    "disputed",
  );
  if (payment === null) return "ignored";
  if (payment === "not_credited") return "not_credited";
  return reinstated
    ? await disputeReinstated(svc, dispute, payment)
    : await disputeWithdrawn(svc, dispute, paymentIntent!, chargeId, payment);
}

async function disputeWithdrawn(
  svc: Services,
  dispute: Stripe.Dispute,
  paymentIntent: string,
  chargeId: string | null,
  payment: StripePayment,
): Promise<EventResult> {
  const amount = BigInt(payment.amount);
  if (amount <= 0n) return "ignored";
  const key = onceKey(payment.account_id, dispute.id);
  if ((await svc.kv.get(key)).value !== null) return "already_disputed";
  // Written before the take-back, so that the payment's refunds count it.
  const record: StripeDispute = {
    account_id: payment.account_id,
    charge: chargeId,
    amount: dispute.amount,
    withdrawn_at: new Date(svc.now()).toISOString(),
  };
  const recordKey = stripeDisputeKey(paymentIntent, dispute.id);
  await svc.kv.atomic().check({ key: recordKey, versionstamp: null }).set(recordKey, record)
    .commit();
  // The disputed cents come after the charge's refunds (a fresh listing), shared out as refunds
  // are: the cumulative share of refunds and dispute, less the refunds' own. What the refunds and
  // the other disputes took is never taken twice.
  const share = (cents: bigint) => creditShare(payment.credits, amount, cents);
  const refunded = chargeId
    ? (await refundsOf(svc, { id: chargeId })).reduce((n, r) => n + BigInt(r.amount), 0n)
    : 0n;
  let take = share(refunded + BigInt(dispute.amount)) - share(refunded);
  const left = payment.credits - share(refunded) -
    await disputedCredit(svc, paymentIntent, payment, dispute.id);
  if (take > left) take = left;
  if (take <= 0n) {
    const claim = await svc.kv.atomic().check({ key, versionstamp: null })
      .set(key, { nothing_taken: true } satisfies DisputeTakeBack).commit();
    return claim.ok ? "nothing_to_take" : "already_disputed";
  }
  const r = await svc.actors.submit(payment.account_id, {
    kind: "credit",
    type: "adjustment",
    amount: -take,
    description: `Stripe dispute ${dispute.id} (${dispute.reason}): ${payment.name} package`,
    reference: dispute.id,
    // A reinstatement recorded meanwhile holds this key too, so the take-back replays instead.
    once: {
      key,
      value: (e: LedgerEntry): DisputeTakeBack => ({ entry_id: e.id, amount: -e.amount }),
    },
  });
  return r.replayed ? "already_disputed" : "disputed";
}

async function disputeReinstated(
  svc: Services,
  dispute: Stripe.Dispute,
  payment: StripePayment,
): Promise<EventResult> {
  const key = onceKey(payment.account_id, dispute.id);
  let taken: Deno.KvEntryMaybe<DisputeTakeBack>;
  for (;;) {
    taken = await svc.kv.get<DisputeTakeBack>(key);
    if (taken.value !== null) break;
    // Nothing taken back: the take-back's own once-key says it never may be.
    const claim = await svc.kv.atomic().check(taken)
      .set(key, { reinstated_before_take_back: true } satisfies DisputeTakeBack).commit();
    if (claim.ok) return "ignored";
  }
  if (!("entry_id" in taken.value)) return "ignored";
  const r = await svc.actors.submit(payment.account_id, {
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
