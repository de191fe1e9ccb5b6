/** Records stored in KV. Money fields are nano-USD bigints; times are ISO strings or epoch ms. */

export interface Account {
  id: string;
  name: string;
  email: string | null;
  created_at: string;
}

/**
 * The balance record: changed only by the account actor's check-and-set atomics. Debits settled on
 * a lease are not in `balance` and `total_used` until the lease is folded in (see `Lease`).
 */
export interface BalanceState {
  balance: bigint;
  /** Σ open holds written to KV (the shared path). */
  reserved: bigint;
  total_purchased: bigint;
  total_used: bigint;
  /** Σ `granted` of the account's open leases (missing: none). */
  leased?: bigint;
  /** How many leases are open on the account. */
  leases?: number;
  /**
   * When a reserve last found too little available while other processes' leases held credit:
   * those processes shrink their leases to what they hold, and none takes a new one for a while.
   */
  recall_ms?: number;
}

export const EMPTY_BALANCE: BalanceState = {
  balance: 0n,
  reserved: 0n,
  total_purchased: 0n,
  total_used: 0n,
};

export interface Hold {
  id: string;
  key_id: string;
  amount: bigint;
  created_ms: number;
  expires_ms: number;
}

export type LimitReset = "daily" | "weekly" | "monthly";
export type KeyScope = "inference" | "management";

export interface ApiKey {
  id: string;
  account_id: string;
  name: string;
  scope: KeyScope;
  prefix: string;
  hash: string;
  created_at: string;
  disabled: boolean;
  revoked_at: string | null;
  credit_limit: bigint | null;
  limit_reset: LimitReset | null;
  expires_at: string | null;
  rate_limit_rpm: number | null;
}

/** One key's money state, kept beside the balance and changed in the same atomics. */
export interface KeySpend {
  spend: bigint;
  reserved: bigint;
  /** The limit period the `period_spend` belongs to (see `limitPeriod`). */
  period: string;
  period_spend: bigint;
  day: string;
  usage_today: bigint;
  month: string;
  usage_month: bigint;
  last_used_at: string | null;
  /** Requests admitted in the last 60 s, as [epoch second, count] pairs (for `rate_limit_rpm`). */
  rate?: [sec: number, count: number][];
  /** Σ credit-limit slices of the key in the account's open leases (missing: none). */
  leased?: bigint;
}

/** One key's part of a lease. */
export interface LeaseKey {
  /**
   * The key's spend settled on the lease since it was last folded in: the counters of `KeySpend`
   * (`reserved`, `rate` and `leased` unused), each for the period, day and month it names.
   */
  delta: KeySpend;
  /**
   * Of a key with a credit limit: the part of its remaining limit moved into the lease (counted in
   * the key spend's `leased`); `delta.spend` is what was settled on it. Null without a limit.
   */
  slice: bigint | null;
  /** The limit and reset the slice was taken under: a key changed since is served shared. */
  limit: bigint | null;
  reset: LimitReset | null;
  /** The key's local holds as of the lease's last commit (what customers see as reserved). */
  held: bigint;
}

/**
 * ["lease", accountId, leaseId] → Lease: credit one process moved out of the account's
 * available balance to serve the account's requests without touching the shared balance record.
 * Its debits are committed to it (with their outbox entries) and folded into the balance later.
 * True balance = balance − Σ spent; available = balance − reserved − leased.
 */
export interface Lease {
  id: string;
  /** The process that took it (a random id per process start). */
  owner: string;
  /** Credit in the lease, its debits since the last fold included (Σ = BalanceState.leased). */
  granted: bigint;
  /** Debits settled on the lease since it was last folded into the balance. */
  spent: bigint;
  /** The owner's local holds as of its last commit (what customers see as reserved). */
  held: bigint;
  /** After this, any process may reclaim it: fold its debits and return the rest. */
  expires_ms: number;
  /** By key id, at most MAX_LEASE_KEYS. */
  keys: Record<string, LeaseKey>;
}

export const EMPTY_KEY_SPEND: KeySpend = {
  spend: 0n,
  reserved: 0n,
  period: "",
  period_spend: 0n,
  day: "",
  usage_today: 0n,
  month: "",
  usage_month: 0n,
  last_used_at: null,
};

export type LedgerType = "purchase" | "usage_debit" | "adjustment" | "refund";

export interface LedgerEntry {
  id: string;
  type: LedgerType;
  /** Signed: purchase and refund positive, usage_debit negative, adjustment either. */
  amount: bigint;
  balance_after: bigint;
  created_at: string;
  description: string;
  reference: string | null;
  /** A purchase's receipt (Stripe's `receipt_url` of its charge), when known. */
  receipt_url?: string;
  /** A usage debit's market cost (positive; rows recorded before it was kept lack it). */
  market_cost?: bigint;
}

/** What the audit trail keeps of one request: metadata only, never content. */
/**
 * The most characters a request's free text keeps in its event and audit row (the client's text,
 * which must fit one KV value): a provider or model name (a refused request's `model` is whatever
 * the client sent), and a user agent.
 */
export const MAX_NAME_CHARS = 256;
export const MAX_USER_AGENT_CHARS = 512;

export interface RequestFacts {
  request_id: string;
  key_id: string;
  key_name: string;
  provider: string;
  model: string;
  prompt_tokens: number;
  completion_tokens: number;
  cached_tokens: number;
  cache_write_tokens: number;
  reasoning_tokens: number;
  cost: bigint;
  market_cost: bigint;
  latency_ms: number;
  status: number;
  streaming: boolean;
  client_ip: string;
  user_agent: string;
  /** The API error code of a refused or failed request. */
  error_code: string | null;
}

/**
 * What one request leaves behind, content-free. Committed as an outbox entry in the atomic that
 * settles (or refuses) the request; the recorder turns it into the audit row, the ledger row (if
 * money moved) and the usage rollups.
 */
export interface UsageEvent extends RequestFacts {
  id: string;
  account_id: string;
  ts: number;
  /** True when a provider answered and the request was billed (counted in usage). */
  billed: boolean;
  /** The balance right after this debit, when money moved. */
  balance_after: bigint | null;
}

/** The audit row: API.md's columns (`timestamp` first), plus the error code. */
export interface AuditRow extends RequestFacts {
  timestamp: string;
}
