/** What the Stripe event handlers store and what they are given. */
import type Stripe from "stripe";
import type { AccountActors } from "../actor.ts";
import type { CreditPackage } from "../packages.ts";
import type { Logger } from "../../log.ts";
import type { EntryData } from "../../webhooks/events.ts";

/**
 * What the handlers of Stripe's events use, and nothing else: the KV, the account actors (every
 * credit goes through them), the client (null without a key), the packages on sale, the clock and
 * the log, and how a credited entry is shown in its customer webhook event.
 */
export interface StripeDeps {
  kv: Deno.Kv;
  actors: Pick<AccountActors, "submit">;
  stripe: Stripe | null;
  packages: readonly CreditPackage[];
  now: () => number;
  log: Logger;
  entryData: EntryData;
}

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

/** What an event did. */
export const EVENT_RESULTS = [
  "credited",
  "already_credited",
  "awaiting_payment",
  "refunded",
  "already_refunded",
  "refund_reversed",
  "already_reversed",
  "disputed",
  "already_disputed",
  "dispute_reinstated",
  "already_reinstated",
  "nothing_to_take",
  "not_credited",
  "ignored",
  "rejected",
] as const;
export type EventResult = typeof EVENT_RESULTS[number];
