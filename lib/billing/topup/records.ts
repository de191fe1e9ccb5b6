/**
 * Auto top-up's records, read and written by name: the saved card and the settings with their
 * state (the month's total, consecutive failures, the attempt in flight, the last outcome).
 */
import type { SpendDeps } from "../spend_deps.ts";
import { autoTopupKey, ledgerTotalKey, paymentMethodKey } from "../../kv/schema.ts";
import { commitRetrying } from "../../kv/util.ts";
import { getBalanceView } from "../views.ts";
import { formatUsd, NANOS_PER_USD } from "../../money.ts";
import { monthOf } from "../periods.ts";
import { NANOS_PER_CENT } from "../stripe/client.ts";

/** The card auto top-up charges: a Stripe PaymentMethod saved to the account's customer. */
export interface SavedCard {
  /** Its PaymentMethod id (development: one of Stripe's test card names, `pm_card_visa`…). */
  id: string;
  brand: string;
  last4: string;
  exp_month: number;
  exp_year: number;
  saved_at: string;
  /** When Stripe created the SetupIntent that saved it (s): an older one arriving later loses. */
  setup_created: number;
}

/** A top-up started (its gate passed) and not finished yet. */
export interface TopupAttempt {
  id: string;
  /** nano-USD, whole cents: what is charged and, once paid, credited. */
  amount: bigint;
  started_ms: number;
  /** The card charged. */
  card: string;
  /** The PaymentIntent, once Stripe answered with one still processing. */
  payment_intent: string | null;
}

/** How the last top-up ended. */
export interface TopupOutcome {
  id: string;
  outcome: "succeeded" | "failed";
  amount: bigint;
  /** Stripe's PaymentIntent (development: the attempt's id); null when none was made. */
  payment_intent: string | null;
  /** Why it failed: `card_declined`, `requires_action`, another Stripe code, or `no_answer`. */
  reason: string | null;
  at: string;
}

/** ["auto_topup", accountId]: the settings and the state a top-up is decided on. */
export interface AutoTopup {
  enabled: boolean;
  /** A settlement taking the balance from at or above this to below it starts a top-up. */
  threshold: bigint;
  amount: bigint;
  /** The most auto top-up credits in one UTC month. */
  monthly_cap: bigint;
  /** Consecutive failed attempts; MAX_FAILURES turns auto top-up off. */
  failures: number;
  /** The UTC month `this_month` counts ("2026-12"). */
  month: string;
  this_month: bigint;
  /** The one gate: set by check-and-set when a top-up starts, cleared when it ends. */
  in_flight: TopupAttempt | null;
  last: TopupOutcome | null;
  /**
   * No top-up starts while the account's credit total (Σ positive ledger rows) is still this: set
   * by a failure and by enabling below the threshold, so that only a crossing after the balance
   * rose again (which takes a credit) starts one.
   */
  wait_credit: bigint | null;
  updated_at: string;
}

/** Consecutive failures that turn auto top-up off. */
export const MAX_FAILURES = 3;
/** The smallest top-up Stripe charges in USD; one the cap leaves smaller is skipped. */
export const MIN_TOPUP = 50n * NANOS_PER_CENT;

/** What a new account reads: off, with example figures to start from. */
export const DEFAULT_AUTO_TOPUP: AutoTopup = {
  enabled: false,
  threshold: 5n * NANOS_PER_USD,
  amount: 25n * NANOS_PER_USD,
  monthly_cap: 100n * NANOS_PER_USD,
  failures: 0,
  month: "",
  this_month: 0n,
  in_flight: null,
  last: null,
  wait_credit: null,
  updated_at: "",
};

/** The account's auto top-up record with its versionstamp (the defaults when none). */
export async function getAutoTopup(
  kv: Deno.Kv,
  accountId: string,
): Promise<Deno.KvEntryMaybe<AutoTopup>> {
  return await kv.get<AutoTopup>(autoTopupKey(accountId));
}

/** `s` with its month's total rolled to the UTC month of `now`. */
export function rollMonth(s: AutoTopup, now: number): AutoTopup {
  const month = monthOf(now);
  return s.month === month ? s : { ...s, month, this_month: 0n };
}

/** What `PUT /v1/billing/auto_topup` may change. */
export type AutoTopupSettings = Partial<
  Pick<AutoTopup, "enabled" | "threshold" | "amount" | "monthly_cap">
>;

/**
 * Changes the account's auto top-up settings (the others kept); "payment_method_required" when it
 * would be on without a saved card, "conflict" when it kept changing meanwhile. Turned on, the failures are cleared; turned on or given a new
 * threshold while the balance is below it, the first top-up waits for credit and a crossing.
 */
export async function updateAutoTopup(
  svc: SpendDeps,
  accountId: string,
  patch: AutoTopupSettings,
): Promise<AutoTopup | "payment_method_required" | "conflict"> {
  const { kv } = svc;
  for (let attempt = 0; attempt < 20; attempt++) {
    const [entry, card] = await kv.getMany<[AutoTopup, SavedCard]>([
      autoTopupKey(accountId),
      paymentMethodKey(accountId),
    ]);
    const cur = entry.value ?? DEFAULT_AUTO_TOPUP;
    // Nothing to change: nothing written.
    if (Object.keys(patch).length === 0) return cur;
    const next: AutoTopup = { ...cur, ...patch, updated_at: new Date(svc.now()).toISOString() };
    if (next.enabled && !card.value) return "payment_method_required";
    if (next.enabled && (!cur.enabled || next.threshold !== cur.threshold)) {
      const [credit, b] = await Promise.all([
        creditTotal(kv, accountId),
        getBalanceView(kv, accountId),
      ]);
      next.wait_credit = b.balance < next.threshold ? credit : null;
      if (!cur.enabled) {
        next.failures = 0;
        if (next.last?.outcome === "failed") next.last = null;
      }
    }
    // The card is checked too: forgetting it turns auto top-up off in its own atomic.
    if ((await commitRetrying(kv.atomic().check(entry, card).set(entry.key, next))).ok) {
      return next;
    }
  }
  return "conflict";
}

/** The account's saved card, or null. */
export async function getCard(kv: Deno.Kv, accountId: string): Promise<SavedCard | null> {
  return (await kv.get<SavedCard>(paymentMethodKey(accountId))).value;
}

/** Σ positive ledger rows of the account (its running total): it moves only when credit arrives. */
export async function creditTotal(kv: Deno.Kv, accountId: string): Promise<bigint> {
  const e = await kv.get<Deno.KvU64>(ledgerTotalKey(accountId, "credit"));
  return e.value instanceof Deno.KvU64 ? e.value.value : 0n;
}

/** A saved card as the API shows it. */
export const cardJson = (c: SavedCard) => ({
  brand: c.brand,
  last4: c.last4,
  exp_month: c.exp_month,
  exp_year: c.exp_year,
});

/** Auto top-up as the API shows it, as of `now` (the month's total rolled over). */
export function autoTopupJson(stored: AutoTopup | null, now: number) {
  const s = rollMonth(stored ?? DEFAULT_AUTO_TOPUP, now);
  return {
    enabled: s.enabled,
    threshold: formatUsd(s.threshold),
    amount: formatUsd(s.amount),
    monthly_cap: formatUsd(s.monthly_cap),
    failures: s.failures,
    this_month: formatUsd(s.this_month),
    in_flight: s.in_flight !== null,
    last: s.last && {
      outcome: s.last.outcome,
      amount: formatUsd(s.last.amount),
      payment_intent: s.last.payment_intent,
      reason: s.last.reason,
      at: s.last.at,
    },
  };
}
