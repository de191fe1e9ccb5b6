/**
 * The whole Deno KV key schema. Each builder names one prefix; the comment says the value's type
 * and what indexes it. Account-owned keys carry the account id right after their prefix. Listings
 * take their prefixes and ranges from here, and read a listed key's parts with its decoder here:
 * no other module builds a key or reads a part by position.
 */

/** ["account", accountId] → Account */
export const accountKey = (id: string) => ["account", id] as const;
export const ACCOUNT_PREFIX = ["account"] as const;
/**
 * The account id of an account's record or of any account-owned key (hold, lease, key spend,
 * pending rollups…: each carries it right after its prefix).
 */
export const accountIdOfKey = (key: Deno.KvKey) => key[1] as string;
/** ["balance", accountId] → BalanceState: the only record a balance changes in (check-and-set). */
export const balanceKey = (accountId: string) => ["balance", accountId] as const;
/** ["lease", accountId, leaseId] → Lease: one process's escrow of the account's credit. */
export const leaseKey = (accountId: string, leaseId: string) =>
  ["lease", accountId, leaseId] as const;
export const LEASE_PREFIX = ["lease"] as const;
/** Every lease of one account. */
export const leasesPrefix = (accountId: string) => ["lease", accountId] as const;
/** ["hold", accountId, holdId] → Hold: one open reservation; Σ amounts = BalanceState.reserved. */
export const holdKey = (accountId: string, holdId: string) => ["hold", accountId, holdId] as const;
export const HOLD_PREFIX = ["hold"] as const;
/** ["key", keyId] → ApiKey */
export const apiKeyKey = (id: string) => ["key", id] as const;
/** ["key_hash", sha256hex] → keyId: the lookup of a presented secret. */
export const keyHashKey = (hash: string) => ["key_hash", hash] as const;
/** ["account_key", accountId, keyId] → true: an account's keys. */
export const accountKeyIndex = (accountId: string, keyId: string) =>
  ["account_key", accountId, keyId] as const;
/** Every `accountKeyIndex` of one account. */
export const accountKeysPrefix = (accountId: string) => ["account_key", accountId] as const;
/** The key id of an `accountKeyIndex`. */
export const keyIdOfIndex = (key: Deno.KvKey) => key[2] as string;
/** ["key_spend", accountId, keyId] → KeySpend: spend and held amount of one key (check-and-set). */
export const keySpendKey = (accountId: string, keyId: string) =>
  ["key_spend", accountId, keyId] as const;
export const KEY_SPEND_PREFIX = ["key_spend"] as const;
/** ["outbox", eventId] → UsageEvent: committed with its debit, removed when recorded. */
export const outboxKey = (eventId: string) => ["outbox", eventId] as const;
export const OUTBOX_PREFIX = ["outbox"] as const;
/** ["ledger", accountId, createdMs, entryId] → LedgerEntry, append-only. */
export const ledgerKey = (accountId: string, ms: number, id: string) =>
  ["ledger", accountId, ms, id] as const;
/** ["ledger", accountId] → every ledger entry of one account, oldest first. */
export const ledgerPrefix = (accountId: string) => ["ledger", accountId] as const;
/** An account's ledger entries created in [fromMs, toMs); from its first entry without `fromMs`. */
export const ledgerRange = (accountId: string, fromMs: number | null, toMs: number) =>
  fromMs === null
    ? { prefix: ledgerPrefix(accountId), end: ["ledger", accountId, toMs] }
    : { start: ["ledger", accountId, fromMs], end: ["ledger", accountId, toMs] };
/**
 * ["ledger_total", accountId, "credit" | "debit"] → Deno.KvU64: Σ positive and Σ negated negative
 * ledger amounts of the account (modulo 2^64), added with `sum` in the atomic writing each ledger
 * row, so the books check reads two counters instead of every row.
 */
export const ledgerTotalKey = (accountId: string, side: "credit" | "debit") =>
  ["ledger_total", accountId, side] as const;
/**
 * ["ledger_total", accountId, "complete"] → epoch ms: the two totals count every ledger row of the
 * account since then (its creation, or the back-fill of an account older than the totals).
 */
export const ledgerTotalsCompleteKey = (accountId: string) =>
  ["ledger_total", accountId, "complete"] as const;
/**
 * ["audit", accountId, timestampMs, requestId] → Uint8Array: the AuditRow as its CSV export line
 * then its error code (lib/audit/row.ts), so the export copies the bytes as stored.
 */
export const auditKey = (accountId: string, ms: number, requestId: string) =>
  ["audit", accountId, ms, requestId] as const;
/** ["audit_id", accountId, requestId] → timestampMs: finds one audit row by request id. */
export const auditIdKey = (accountId: string, requestId: string) =>
  ["audit_id", accountId, requestId] as const;
/** An account's audit rows of [fromMs, toMs), by time. */
export const auditRange = (accountId: string, fromMs: number, toMs: number) => ({
  start: ["audit", accountId, fromMs],
  end: ["audit", accountId, toMs],
});
/** The time and request id of an `auditKey`. */
export const auditKeyParts = (key: Deno.KvKey) => ({
  ms: key[2] as number,
  requestId: key[3] as string,
});
/** The request id of an `auditIdKey`. */
export const requestIdOfAuditId = (key: Deno.KvKey) => key[2] as string;
/**
 * ["rollup", accountId, grain, scope, dimension, bucket, value, field] → Deno.KvU64, added with
 * `sum`. grain "d" (bucket "2026-11-26") or "h" ("2026-11-26T13"); scope "" (the account) with
 * dimensions "all" (value ""), "key", "provider", "model", or a key id with "provider", "model".
 * Bucket before value: one bucket of one dimension is a contiguous range.
 */
export const rollupKey = (
  accountId: string,
  grain: "d" | "h",
  scope: string,
  dim: string,
  bucket: string,
  value: string,
  field: string,
) => ["rollup", accountId, grain, scope, dim, bucket, value, field] as const;
/** Every rollup counter of one account. */
export const rollupPrefix = (accountId: string) => ["rollup", accountId] as const;
/** The counters of one dimension over the buckets `first` to `last` (inclusive) of one grain. */
export const rollupRange = (
  accountId: string,
  grain: "d" | "h",
  scope: string,
  dim: string,
  first: string,
  last: string,
) => ({
  start: ["rollup", accountId, grain, scope, dim, first],
  end: ["rollup", accountId, grain, scope, dim, last + "\u0000"],
});
/** The bucket, value and field of a `rollupKey`. */
export const rollupKeyParts = (key: Deno.KvKey) => ({
  bucket: key[5] as string,
  value: key[6] as string,
  field: key[7] as string,
});
/**
 * ["rollup_pending", accountId, id] → PendingRow[]: rollup counters recorded but not yet added to
 * the "rollup" counters, written with the events' audit rows and folded in by lib/usage/compact.ts.
 */
export const rollupPendingKey = (accountId: string, id: string) =>
  ["rollup_pending", accountId, id] as const;
export const ROLLUP_PENDING_PREFIX = ["rollup_pending"] as const;
/** Every pending rollup entry of one account. */
export const rollupPendingPrefix = (accountId: string) => ["rollup_pending", accountId] as const;
/** Where the pending entries of the accounts after `accountId` begin (a listing's `start`). */
export const rollupPendingAfter = (accountId: string) =>
  ["rollup_pending", accountId + "\u0000"] as const;

/**
 * ["rollup_digest", accountId, grain, scope, dimension, bucket] → RollupDigest: every value's
 * counters of one closed bucket (grain "d", "h", or "m" for a month "2026-11") in one record, valid
 * while the bucket's "all" request count is unchanged (a cache the usage query builds and checks,
 * never the source of truth).
 */
export const rollupDigestKey = (
  accountId: string,
  grain: "d" | "h" | "m",
  scope: string,
  dim: string,
  bucket: string,
) => ["rollup_digest", accountId, grain, scope, dim, bucket] as const;
/** The digests of one dimension over the buckets `first` to `last` (inclusive) of one grain. */
export const rollupDigestRange = (
  accountId: string,
  grain: "d" | "h" | "m",
  scope: string,
  dim: string,
  first: string,
  last: string,
) => ({
  start: ["rollup_digest", accountId, grain, scope, dim, first],
  end: ["rollup_digest", accountId, grain, scope, dim, last + "\u0000"],
});
/** The bucket of a `rollupDigestKey`. */
export const bucketOfDigest = (key: Deno.KvKey) => key[5] as string;
/** ["idem", scope, idempotencyKey] → IdempotentReply, kept for 24 h. */
export const idemKey = (scope: string, key: string) => ["idem", scope, key] as const;
/** ["once", accountId, reference] → ledger entry id: a credit applied at most once per reference. */
export const onceKey = (accountId: string, reference: string) =>
  ["once", accountId, reference] as const;
/** ["user", userId] → User: a person who signs in to the dashboard. */
export const userKey = (id: string) => ["user", id] as const;
/** ["user_email", lowercased email] → userId: the sign-in lookup, unique per email. */
export const userEmailKey = (email: string) => ["user_email", email] as const;
/** ["member", accountId, userId] → Membership: who belongs to an account, with the role. */
export const memberKey = (accountId: string, userId: string) =>
  ["member", accountId, userId] as const;
/** Every `memberKey` of one account. */
export const membersPrefix = (accountId: string) => ["member", accountId] as const;
/** ["user_account", userId, accountId] → Membership: the accounts one user belongs to. */
export const userAccountKey = (userId: string, accountId: string) =>
  ["user_account", userId, accountId] as const;
/** Every `userAccountKey` of one user. */
export const userAccountsPrefix = (userId: string) => ["user_account", userId] as const;
/** ["session", sha256hex of the cookie token] → Session, expiring with the session. */
export const sessionKey = (tokenHash: string) => ["session", tokenHash] as const;
/**
 * ["signin_attempts", client, window start ms] → number: sign-in attempts of one client (an IPv4
 * address or an IPv6 /64) in one window.
 */
export const signinAttemptsKey = (client: string, windowMs: number) =>
  ["signin_attempts", client, windowMs] as const;

/**
 * ["signin_failures", email hash, window start ms] → number: failed sign-ins of one email (its
 * SHA-256, never the email) in one window, from whatever address.
 */
export const signinFailuresKey = (emailHash: string, windowMs: number) =>
  ["signin_failures", emailHash, windowMs] as const;
/** ["stripe_customer", accountId] → Stripe customer id: one customer per account, created once. */
export const stripeCustomerKey = (accountId: string) => ["stripe_customer", accountId] as const;
/** ["stripe_checkout", sessionId] → CheckoutRecord: what a Checkout Session was created to sell. */
export const stripeCheckoutKey = (sessionId: string) => ["stripe_checkout", sessionId] as const;
/** ["stripe_payment", paymentIntentId] → StripePayment: a credited payment, found by its refunds. */
export const stripePaymentKey = (paymentIntentId: string) =>
  ["stripe_payment", paymentIntentId] as const;
/**
 * ["stripe_refund_failed", refundId] → RefundFailure: Stripe reported the refund failed, so no
 * later delivery of its charge may take its credit back.
 */
export const stripeRefundFailedKey = (refundId: string) =>
  ["stripe_refund_failed", refundId] as const;
/**
 * ["stripe_dispute", paymentIntentId, disputeId] → StripeDispute: a dispute whose funds were
 * withdrawn from a credited payment, so that the payment's refunds count what it took back.
 */
export const stripeDisputeKey = (paymentIntentId: string, disputeId: string) =>
  ["stripe_dispute", paymentIntentId, disputeId] as const;
/** ["stripe_dispute", paymentIntentId] → every StripeDispute of one payment. */
export const stripeDisputesPrefix = (paymentIntentId: string) =>
  ["stripe_dispute", paymentIntentId] as const;
/** The dispute id of a `stripeDisputeKey`. */
export const disputeIdOfKey = (key: Deno.KvKey) => key[2] as string;
/**
 * ["stripe_rejected", paymentIntentId] → StripeRejection: a paid Checkout Session the router refused
 * to credit, so that its refunds are answered at once instead of waiting for a purchase.
 */
export const stripeRejectedKey = (paymentIntentId: string) =>
  ["stripe_rejected", paymentIntentId] as const;

/**
 * ["webhooks", accountId] → WebhookEndpoint[]: the account's webhook endpoints (at most
 * MAX_ENDPOINTS), in one record so that the bound holds under concurrent writes.
 */
export const webhooksKey = (accountId: string) => ["webhooks", accountId] as const;
/**
 * ["webhook_outbox", eventId] → AccountEvent: committed with what caused it, removed when it is
 * fanned out into one delivery per subscribed endpoint. Event ids are time-ordered.
 */
export const webhookOutboxKey = (eventId: string) => ["webhook_outbox", eventId] as const;
export const WEBHOOK_OUTBOX_PREFIX = ["webhook_outbox"] as const;
/**
 * ["webhook_tests", accountId, endpointId, minute] → number: the test events sent to an endpoint in
 * one minute (epoch ms ÷ 60 000), expiring after the next one.
 */
export const webhookTestsKey = (accountId: string, endpointId: string, minute: number) =>
  ["webhook_tests", accountId, endpointId, minute] as const;
/** ["webhook_delivery", accountId, endpointId, eventId] → Delivery: one event to one endpoint. */
export const webhookDeliveryKey = (accountId: string, endpointId: string, eventId: string) =>
  ["webhook_delivery", accountId, endpointId, eventId] as const;
/** ["webhook_delivery", accountId, endpointId] → every Delivery to one endpoint, oldest first. */
export const webhookDeliveriesPrefix = (accountId: string, endpointId: string) =>
  ["webhook_delivery", accountId, endpointId] as const;
/**
 * ["webhook_due", dueMs, accountId, endpointId, eventId] → null: a pending delivery's next attempt
 * (or the end of an attempt's lease), time first so that what is due is one range.
 */
export const webhookDueKey = (
  dueMs: number,
  accountId: string,
  endpointId: string,
  eventId: string,
) => ["webhook_due", dueMs, accountId, endpointId, eventId] as const;
export const WEBHOOK_DUE_PREFIX = ["webhook_due"] as const;
/** The due entries of deliveries due at or before `ms`, earliest first. */
export const webhookDueBy = (ms: number) => ({
  prefix: WEBHOOK_DUE_PREFIX,
  end: ["webhook_due", ms + 1],
});
/** The due time and the delivery (account, endpoint, event) a `webhookDueKey` names. */
export const webhookDueParts = (key: Deno.KvKey) => ({
  dueMs: key[1] as number,
  accountId: key[2] as string,
  endpointId: key[3] as string,
  eventId: key[4] as string,
});
/**
 * ["event_latest", accountId, type] → AccountEvent: the account's latest event of each type,
 * written by `emitEvent` with the event (the dashboard's alert banner reads it), kept 30 days.
 */
export const latestEventKey = (accountId: string, type: string) =>
  ["event_latest", accountId, type] as const;
/** ["payment_method", accountId] → SavedCard: the card auto top-up charges (one per account). */
export const paymentMethodKey = (accountId: string) => ["payment_method", accountId] as const;
/**
 * ["auto_topup", accountId] → AutoTopup: the account's auto top-up settings and state; its
 * `in_flight` is the one gate of a top-up (set by check-and-set, so one runs at a time).
 */
export const autoTopupKey = (accountId: string) => ["auto_topup", accountId] as const;
/**
 * ["topup_flight", startedMs, accountId] → attempt id: a top-up in flight, time first, so that a
 * sweep finds those left unfinished (their process died) as one range.
 */
export const topupFlightKey = (startedMs: number, accountId: string) =>
  ["topup_flight", startedMs, accountId] as const;
export const TOPUP_FLIGHT_PREFIX = ["topup_flight"] as const;
/** ["alerts", accountId] → AlertSettings: the low-balance threshold and when it last fired. */
export const alertsKey = (accountId: string) => ["alerts", accountId] as const;
/**
 * ["key_alert", accountId, keyId, period, basis points] → KeyAlertMark: a key's threshold fired in
 * one limit period (set once, across processes).
 */
export const keyAlertKey = (accountId: string, keyId: string, period: string, bp: number) =>
  ["key_alert", accountId, keyId, period, bp] as const;
/**
 * ["statement_close", accountId, "2026-11"] → bigint: Σ ledger through the end of a closed month
 * (a cache of the statements, written once no more rows can land in the month).
 */
export const statementCloseKey = (accountId: string, month: string) =>
  ["statement_close", accountId, month] as const;
/** The closed months of one account before `month`. */
export const statementClosesBefore = (accountId: string, month: string) => ({
  prefix: ["statement_close", accountId],
  end: statementCloseKey(accountId, month),
});
/** The month of a `statementCloseKey`. */
export const monthOfStatementClose = (key: Deno.KvKey) => key[2] as string;
/** ["meta", "schema_version"] → number: the last migration applied (lib/migrations.ts); none is 0. */
export const SCHEMA_VERSION_KEY = ["meta", "schema_version"] as const;
/**
 * ["meta", "migration_lock"] → MigrationLock: the process running migrations, until `expires_ms`
 * (renewed while it runs).
 */
export const MIGRATION_LOCK_KEY = ["meta", "migration_lock"] as const;

/**
 * Prefixes of entries that are not moved between KVs (`deno task kv:export` leaves them out):
 * dashboard sessions (everyone signs in again), sign-in and webhook test rate windows, the
 * migration lock.
 */
export const EPHEMERAL_PREFIXES: readonly Deno.KvKey[] = [
  ["session"],
  ["signin_attempts"],
  ["signin_failures"],
  ["webhook_tests"],
  MIGRATION_LOCK_KEY,
];
