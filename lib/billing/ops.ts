/** The operations an account actor commits, and what each resolves with. */
import type { LedgerEntry, LedgerType, UsageEvent } from "./types.ts";
import type { AccountEvent } from "../webhooks/events.ts";

/** Take `amount` out of the available balance (and the key's limit) until settled or released. */
export interface ReserveOp {
  kind: "reserve";
  keyId: string;
  holdId: string;
  amount: bigint;
  ttlMs: number;
}
/** Release the hold, debit the actual cost, and commit the usage event. */
export interface SettleOp {
  kind: "settle";
  keyId: string;
  holdId: string;
  cost: bigint;
  event: UsageEvent;
}
/** Release a hold without charge (the provider failed); the event, if any, is recorded. */
export interface ReleaseOp {
  kind: "release";
  /** The hold's key: its spend record gives the held amount back too. */
  keyId: string;
  holdId: string;
  event: UsageEvent | null;
}
/** Record an event that moved no money (a refused request). */
export interface RecordOp {
  kind: "record";
  event: UsageEvent;
}
/** Release a hold whose request died with its process. */
export interface ExpireOp {
  kind: "expire";
  keyId: string;
  holdId: string;
}
/**
 * Push back the expiry of a hold this process still serves, to `ttlMs` from now, so that no
 * process's sweep releases it. A hold already gone (settled, released or expired) is not recreated.
 */
export interface RenewOp {
  kind: "renew";
  holdId: string;
  ttlMs: number;
}
/**
 * Add a ledger entry and move the balance by `amount` (signed). With `once`, the credit is applied
 * at most once: the key is written in the same atomic, and a second attempt replays what was stored.
 */
export interface CreditOp {
  kind: "credit";
  type: Exclude<LedgerType, "usage_debit">;
  amount: bigint;
  description: string;
  reference: string | null;
  once?: { key: Deno.KvKey; value: (entry: LedgerEntry) => unknown; expireIn?: number };
  /** A purchase's receipt, kept on its ledger entry. */
  receipt_url?: string;
  /** The customer webhook event this credit emits, committed with it (`emitEvent`). */
  event?: (entry: LedgerEntry) => AccountEvent;
}
/**
 * Maintain this process's lease on the account: `topup` it to its wanted size (taking one if
 * none), `sync` it (push its expiry out, write its holds' figure; shrink it if recalled), or
 * `return` it (fold its debits, give back all its holds do not need; deleted once it holds none).
 */
export interface LeaseOp {
  kind: "lease";
  action: "topup" | "sync" | "return";
}
/**
 * Reclaim another process's lease found past its expiry: fold its debits into the balance and
 * return the rest. `keyIds`: the keys it serves (as listed), whose spends take its deltas.
 * Resolves with whether it was reclaimed.
 */
export interface ReclaimOp {
  kind: "reclaim";
  leaseId: string;
  keyIds: string[];
}
export type Op =
  | ReserveOp
  | SettleOp
  | ReleaseOp
  | RecordOp
  | ExpireOp
  | RenewOp
  | CreditOp
  | LeaseOp
  | ReclaimOp;

export type ReserveResult =
  | { ok: true }
  | { ok: false; code: "insufficient_credits"; available: bigint }
  | { ok: false; code: "key_limit_exceeded"; remaining: bigint }
  | { ok: false; code: "rate_limited"; rpm: number; retryAfterSec: number }
  | { ok: false; code: "key_disabled" | "invalid_api_key" };
/**
 * A reserve's decision: `recall` when it was refused while other processes' leases hold credit
 * that would cover it (they were asked to give it back: the reserve is tried again shortly).
 */
export type ReserveDecision = ReserveResult & { recall?: true };
export type CreditResult = { replayed: false; entry: LedgerEntry } | {
  replayed: true;
  stored: unknown;
};
export interface SettleResult {
  balanceAfter: bigint;
  /** What was debited: the cost, or less when the cost would have overdrawn the balance. */
  charged: bigint;
}
/** The renewed hold's new expiry, or null when the hold is gone (or not this process's). */
export type RenewResult = number | null;

export type ResultOf<O extends Op> = O extends ReserveOp ? ReserveDecision
  : O extends CreditOp ? CreditResult
  : O extends SettleOp ? SettleResult
  : O extends RenewOp ? RenewResult
  : O extends ReclaimOp ? boolean
  : void;
