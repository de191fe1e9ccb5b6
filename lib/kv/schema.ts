/**
 * The whole Deno KV key schema. Each builder names one prefix; the comment says the value's type
 * and what indexes it. Account-owned keys carry the account id right after their prefix.
 */

/** ["account", accountId] → Account */
export const accountKey = (id: string) => ["account", id] as const;
/** ["balance", accountId] → BalanceState: the only record a balance changes in (check-and-set). */
export const balanceKey = (accountId: string) => ["balance", accountId] as const;
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
/** ["key_spend", accountId, keyId] → KeySpend: spend and held amount of one key (check-and-set). */
export const keySpendKey = (accountId: string, keyId: string) =>
  ["key_spend", accountId, keyId] as const;
/** ["outbox", eventId] → UsageEvent: committed with its debit, removed when recorded. */
export const outboxKey = (eventId: string) => ["outbox", eventId] as const;
export const OUTBOX_PREFIX = ["outbox"] as const;
/** ["ledger", accountId, createdMs, entryId] → LedgerEntry, append-only. */
export const ledgerKey = (accountId: string, ms: number, id: string) =>
  ["ledger", accountId, ms, id] as const;
/** ["audit", accountId, timestampMs, requestId] → AuditRow */
export const auditKey = (accountId: string, ms: number, requestId: string) =>
  ["audit", accountId, ms, requestId] as const;
/** ["audit_id", accountId, requestId] → timestampMs: finds one audit row by request id. */
export const auditIdKey = (accountId: string, requestId: string) =>
  ["audit_id", accountId, requestId] as const;
/**
 * ["rollup", accountId, grain, dimension, value, bucket, field] → Deno.KvU64, added with `sum`.
 * grain "d" (bucket "2026-11-26") or "h" ("2026-11-26T13"); dimension "all" (value ""), "key",
 * "provider", "model", "key_provider", "key_model" (value "keyId|name").
 */
export const rollupKey = (
  accountId: string,
  grain: "d" | "h",
  dim: string,
  value: string,
  bucket: string,
  field: string,
) => ["rollup", accountId, grain, dim, value, bucket, field] as const;
/** ["idem", scope, idempotencyKey] → IdempotentReply, kept for 24 h. */
export const idemKey = (scope: string, key: string) => ["idem", scope, key] as const;
/** ["once", accountId, reference] → ledger entry id: a credit applied at most once per reference. */
export const onceKey = (accountId: string, reference: string) =>
  ["once", accountId, reference] as const;
