/**
 * What the API shows: each JSON shape declared once as a zod schema (which the OpenAPI document
 * publishes, lib/http/openapi.ts) with the presenter that builds it from the domain's records.
 * API routes and dashboard pages both use these, so a page shows exactly what the API answers.
 */
import { alertBp } from "../billing/alerts.ts";
import { z } from "zod";
import { formatUsd, savingsPercent } from "../money.ts";
import type {
  Account,
  ApiKey,
  AuditRow,
  BalanceState,
  KeySpend,
  LedgerEntry,
} from "../billing/types.ts";
import { EMPTY_KEY_SPEND } from "../billing/types.ts";
import type { CreditPackage } from "../billing/packages.ts";
import type { Statement } from "../billing/statements.ts";
import type { BooksDifference } from "../billing/accounts.ts";
import type { WebhookEndpoint } from "../webhooks/endpoints.ts";
import type { Delivery } from "../webhooks/dispatcher.ts";
import { EVENT_TYPES } from "../webhooks/events.ts";
import type { Totals } from "../usage/rollups.ts";
import type { UsageResult } from "../usage/query.ts";
import { auditJson } from "../audit/row.ts";

/** USD as the API writes it: a decimal string, up to 9 fraction digits, no trailing zeros. */
export const Usd = z.string().regex(/^-?\d+(\.\d{0,8}[1-9])?$/).meta({
  description: "USD as a decimal string (up to 9 fraction digits)",
  example: "12.5",
});
const Time = z.string().meta({ description: "ISO 8601 time, UTC" });
const Cursor = z.string().nullable().meta({
  description: "Pass back as `cursor` for the next page; null on the last page",
});
const page = <T extends z.ZodType>(item: T) =>
  z.strictObject({ data: z.array(item), next_cursor: Cursor });
/** `{data: [item]}`: a whole list, unpaged. */
export const listOf = <T extends z.ZodType>(item: T) => z.strictObject({ data: z.array(item) });

/** `{"error": {message, type, code}}`: every error, on every endpoint. */
export const ErrorSchema = z.strictObject({
  error: z.strictObject({ message: z.string(), type: z.string(), code: z.string() }),
}).meta({ id: "Error" });

// Keys.

export const KeySchema = z.strictObject({
  id: z.string(),
  name: z.string(),
  scope: z.enum(["inference", "management"]),
  prefix: z.string().meta({ description: "The secret's first 10 characters" }),
  created_at: Time,
  last_used_at: Time.nullable(),
  disabled: z.boolean(),
  revoked: z.boolean(),
  credit_limit: Usd.nullable(),
  limit_reset: z.enum(["daily", "weekly", "monthly"]).nullable(),
  expires_at: Time.nullable(),
  rate_limit_rpm: z.number().int().nullable(),
  alert_thresholds: z.array(z.number()).meta({
    description: "Fractions of the credit limit that fire key.limit_threshold",
  }),
  spend: Usd,
}).meta({ id: "Key" });
export const KeyCreatedSchema = KeySchema.extend({
  key: z.string().meta({ description: "The secret, shown this once" }),
}).meta({ id: "KeyCreated" });
export const DeletedSchema = z.strictObject({ id: z.string(), deleted: z.literal(true) })
  .meta({ id: "Deleted" });

/**
 * A key as the API shows it (never its hash).
 *
 * @example
 * ```ts
 * keyJson(key, spend).spend; // "0.25"
 * ```
 */
export function keyJson(k: ApiKey, s: KeySpend = EMPTY_KEY_SPEND): z.infer<typeof KeySchema> {
  return {
    id: k.id,
    name: k.name,
    scope: k.scope,
    prefix: k.prefix,
    created_at: k.created_at,
    last_used_at: s.last_used_at,
    disabled: k.disabled,
    revoked: k.revoked_at !== null,
    credit_limit: k.credit_limit === null ? null : formatUsd(k.credit_limit),
    limit_reset: k.limit_reset,
    expires_at: k.expires_at,
    rate_limit_rpm: k.rate_limit_rpm,
    alert_thresholds: alertBp(k).map((bp) => bp / 10_000),
    spend: formatUsd(s.spend),
  };
}

// Balances and the ledger.

export const CreditsSchema = z.strictObject({
  balance: Usd,
  reserved: Usd,
  available: Usd,
  total_purchased: Usd,
  total_used: Usd,
}).meta({ id: "Credits" });

/** An account's balance as `GET /v1/credits` shows it. */
export function creditsJson(b: BalanceState): z.infer<typeof CreditsSchema> {
  return {
    balance: formatUsd(b.balance),
    reserved: formatUsd(b.reserved),
    available: formatUsd(b.balance - b.reserved),
    total_purchased: formatUsd(b.total_purchased),
    total_used: formatUsd(b.total_used),
  };
}

export const LedgerEntrySchema = z.strictObject({
  id: z.string(),
  type: z.enum(["purchase", "usage_debit", "adjustment", "refund"]),
  amount: Usd.meta({ description: "Signed: purchase and refund positive, usage_debit negative" }),
  balance_after: Usd,
  created_at: Time,
  description: z.string(),
  reference: z.string().nullable(),
  receipt_url: z.string().optional().meta({ description: "A purchase's Stripe receipt" }),
}).meta({ id: "LedgerEntry" });
export const LedgerPageSchema = page(LedgerEntrySchema).meta({ id: "LedgerPage" });
export type LedgerJson = z.infer<typeof LedgerEntrySchema>;

/** A ledger entry as the API shows it (money as decimal strings). */
export function ledgerJson(e: LedgerEntry): LedgerJson {
  return {
    id: e.id,
    type: e.type,
    amount: formatUsd(e.amount),
    balance_after: formatUsd(e.balance_after),
    created_at: e.created_at,
    description: e.description,
    reference: e.reference,
    // Stripe's receipt of a purchase, where one is known.
    ...(e.receipt_url ? { receipt_url: e.receipt_url } : {}),
  };
}

// Usage.

const totalsShape = {
  requests: z.number().int(),
  prompt_tokens: z.number().int(),
  completion_tokens: z.number().int(),
  cached_tokens: z.number().int(),
  cache_write_tokens: z.number().int(),
  reasoning_tokens: z.number().int(),
  cost: Usd,
  market_cost: Usd,
  savings: Usd,
  savings_percent: z.number().meta({ description: "Percent: 20 means 20 %" }),
};
export const UsageTotalsSchema = z.strictObject(totalsShape).meta({ id: "UsageTotals" });
export const UsageSchema = z.strictObject({
  from: Time,
  to: Time,
  group_by: z.enum(["date", "key", "provider", "model"]),
  interval: z.enum(["hour", "day", "week", "month"]).nullable(),
  summary: UsageTotalsSchema,
  breakdown: z.array(z.strictObject({ group: z.string(), ...totalsShape })),
}).meta({ id: "Usage" });
export type UsageJson = z.infer<typeof UsageSchema>;

/** Totals as the API shows them: counts as numbers, money as decimal strings. */
export function totalsJson(t: Totals): z.infer<typeof UsageTotalsSchema> {
  return {
    requests: Number(t.requests),
    prompt_tokens: Number(t.prompt_tokens),
    completion_tokens: Number(t.completion_tokens),
    cached_tokens: Number(t.cached_tokens),
    cache_write_tokens: Number(t.cache_write_tokens),
    reasoning_tokens: Number(t.reasoning_tokens),
    cost: formatUsd(t.cost),
    market_cost: formatUsd(t.market_cost),
    savings: formatUsd(t.market_cost - t.cost),
    savings_percent: savingsPercent(t.cost, t.market_cost),
  };
}

/**
 * A usage query's answer as `GET /v1/usage` shows it.
 *
 * @example
 * ```ts
 * usageJson(await queryUsage(kv, { accountId, fromMs, toMs, now })).summary.cost; // "1.25"
 * ```
 */
export function usageJson(r: UsageResult): UsageJson {
  return {
    from: new Date(r.fromMs).toISOString(),
    to: new Date(r.toMs).toISOString(),
    group_by: r.groupBy,
    interval: r.interval,
    summary: totalsJson(r.summary),
    breakdown: r.breakdown.map(([group, t]) => ({ group, ...totalsJson(t) })),
  };
}

// The audit trail.

export const AuditRowSchema = z.strictObject({
  timestamp: Time,
  request_id: z.string(),
  key_id: z.string(),
  key_name: z.string(),
  provider: z.string(),
  model: z.string(),
  prompt_tokens: z.number().int(),
  completion_tokens: z.number().int(),
  cached_tokens: z.number().int(),
  cache_write_tokens: z.number().int(),
  reasoning_tokens: z.number().int(),
  cost: Usd,
  market_cost: Usd,
  latency_ms: z.number(),
  status: z.number().int(),
  streaming: z.boolean(),
  client_ip: z.string(),
  user_agent: z.string(),
  error_code: z.string().nullable(),
}).meta({ id: "AuditRow" });
export const AuditPageSchema = page(AuditRowSchema).meta({ id: "AuditPage" });
export const AuditRowAttemptsSchema = AuditRowSchema.extend({
  attempts: z.array(AuditRowSchema).meta({
    description: "The failed attempts before it (retries, fallbacks), in attempt order",
  }),
}).meta({ id: "AuditRowWithAttempts" });
export type AuditJson = z.infer<typeof AuditRowSchema>;
// Audit rows are shown as the audit trail exports them (lib/audit/row.ts `auditJson`, the JSON
// export's row): checked against the schema here.
const _auditJson: (r: AuditRow) => AuditJson = auditJson;

// Billing.

export const PackageSchema = z.strictObject({
  id: z.string(),
  name: z.string(),
  price: Usd,
  currency: z.literal("usd"),
  credits: Usd.meta({ description: "Credit granted, bonus included" }),
}).meta({ id: "CreditPackage" });

/** A credit package as `GET /v1/billing/packages` lists it. */
export function packageJson(p: CreditPackage): z.infer<typeof PackageSchema> {
  return {
    id: p.id,
    name: p.name,
    price: formatUsd(p.price),
    currency: "usd",
    credits: formatUsd(p.credits),
  };
}

export const StatementSchema = z.strictObject({
  month: z.string().meta({ example: "2026-11" }),
  opening_balance: Usd,
  purchases: Usd,
  usage: z.strictObject({
    total: Usd,
    by_model: z.array(z.strictObject({
      provider: z.string(),
      model: z.string(),
      requests: z.number().int(),
      cost: Usd,
      market_cost: Usd,
    })),
  }),
  adjustments: Usd,
  refunds: Usd,
  closing_balance: Usd,
}).meta({ id: "Statement" });

/** A statement as the API's JSON shows it (amounts as USD strings, signed as in the ledger). */
export function statementJson(s: Statement): z.infer<typeof StatementSchema> {
  return {
    month: s.month,
    opening_balance: formatUsd(s.opening_balance),
    purchases: formatUsd(s.purchases),
    usage: {
      total: formatUsd(s.usage.total),
      by_model: s.usage.by_model.map((l) => ({
        provider: l.provider,
        model: l.model,
        requests: l.requests,
        cost: formatUsd(l.cost),
        market_cost: formatUsd(l.market_cost),
      })),
    },
    adjustments: formatUsd(s.adjustments),
    refunds: formatUsd(s.refunds),
    closing_balance: formatUsd(s.closing_balance),
  };
}

/**
 * A text cell: RFC 4180 quoting, and a leading `'` where a spreadsheet would read a formula
 * (model names are the one free text here).
 */
const textCell = (v: string) => {
  const safe = /^[=+\-@\t\r]/.test(v) ? `'${v}` : v;
  return /[",\r\n]/.test(safe) ? `"${safe.replaceAll('"', '""')}"` : safe;
};

/**
 * A statement as CSV (RFC 4180, CRLF): `section,provider,model,requests,amount`, one row per
 * figure of the JSON but the market costs, in its order; `usage_total` carries all requests.
 */
export function statementCsv(s: Statement): string {
  const row = (section: string, amount: bigint, provider = "", model = "", requests = "") =>
    [section, textCell(provider), textCell(model), requests, formatUsd(amount)].join(",");
  const requests = s.usage.by_model.reduce((n, l) => n + l.requests, 0);
  return [
    "section,provider,model,requests,amount",
    row("opening_balance", s.opening_balance),
    row("purchases", s.purchases),
    ...s.usage.by_model.map((l) => row("usage", l.cost, l.provider, l.model, String(l.requests))),
    row("usage_total", s.usage.total, "", "", String(requests)),
    row("adjustments", s.adjustments),
    row("refunds", s.refunds),
    row("closing_balance", s.closing_balance),
    "",
  ].join("\r\n");
}

// Customer webhooks.

export const WebhookEndpointSchema = z.strictObject({
  id: z.string(),
  url: z.string(),
  events: z.array(z.enum(EVENT_TYPES)),
  disabled: z.boolean(),
  created_at: Time,
  updated_at: Time,
}).meta({ id: "WebhookEndpoint" });
export const WebhookEndpointCreatedSchema = WebhookEndpointSchema.extend({
  secret: z.string().meta({ description: "The signing secret, shown this once" }),
}).meta({ id: "WebhookEndpointCreated" });

/** An endpoint as the API shows it: never its secret. */
export function endpointJson(e: WebhookEndpoint): z.infer<typeof WebhookEndpointSchema> {
  return {
    id: e.id,
    url: e.url,
    events: e.events,
    disabled: e.disabled,
    created_at: e.created_at,
    updated_at: e.updated_at,
  };
}

export const DeliverySchema = z.strictObject({
  webhook_id: z.string().meta({ description: "The event's id, the same at every attempt" }),
  endpoint_id: z.string(),
  type: z.string(),
  state: z.enum(["pending", "delivered", "failed"]),
  attempts: z.number().int(),
  last_status: z.number().int().nullable(),
  last_error: z.string().nullable(),
  latency_ms: z.number().nullable(),
  created_at: Time,
  delivered_at: Time.nullable(),
  next_attempt_at: Time.nullable(),
}).meta({ id: "WebhookDelivery" });
export const DeliveryPageSchema = page(DeliverySchema).meta({ id: "WebhookDeliveryPage" });

/** A delivery as the API shows it. */
export function deliveryJson(d: Delivery): z.infer<typeof DeliverySchema> {
  return {
    webhook_id: d.webhook_id,
    endpoint_id: d.endpoint_id,
    type: d.type,
    state: d.state,
    attempts: d.attempts,
    last_status: d.last_status,
    last_error: d.last_error,
    latency_ms: d.latency_ms,
    created_at: new Date(d.created_ms).toISOString(),
    delivered_at: d.delivered_at,
    next_attempt_at: d.state === "pending" && d.due_ms !== null
      ? new Date(d.due_ms).toISOString()
      : null,
  };
}

// The operator's view.

export const AccountSchema = z.strictObject({
  id: z.string(),
  name: z.string(),
  email: z.string().nullable(),
  created_at: Time,
  ...CreditsSchema.shape,
}).meta({ id: "Account" });
export const AccountCreatedSchema = z.strictObject({
  id: z.string(),
  name: z.string(),
  email: z.string().nullable(),
  management_key: z.string().meta({ description: "The first management key, shown this once" }),
}).meta({ id: "AccountCreated" });
export type AccountJson = z.infer<typeof AccountSchema>;

/** An account with its balance, as the admin API shows it. */
export function accountJson(a: Account, b: BalanceState): AccountJson {
  return { id: a.id, name: a.name, email: a.email, created_at: a.created_at, ...creditsJson(b) };
}

export const VerifySchema = z.strictObject({
  ok: z.boolean(),
  accounts_checked: z.number().int(),
  pending_events: z.number().int().meta({ description: "Usage events not yet in the ledger" }),
  differences: z.array(z.strictObject({
    account_id: z.string(),
    balance: Usd,
    ledger_sum: Usd,
    reserved: Usd,
    holds_sum: Usd,
    leased: Usd.meta({ description: "The balance record's credit out in leases" }),
    leases_sum: Usd,
    keys_leased: Usd,
    slices_sum: Usd,
  })),
}).meta({ id: "BooksCheck" });
export type VerifyJson = z.infer<typeof VerifySchema>;

/** The books check as `GET /v1/admin/verify` reports it (and the admin page shows it). */
export function verifyJson(v: {
  ok: boolean;
  accounts_checked: number;
  pending_events: number;
  differences: BooksDifference[];
}): VerifyJson {
  return {
    ok: v.ok,
    accounts_checked: v.accounts_checked,
    pending_events: v.pending_events,
    differences: v.differences.map((d) => ({
      account_id: d.account_id,
      balance: formatUsd(d.balance),
      ledger_sum: formatUsd(d.ledger_sum),
      reserved: formatUsd(d.reserved),
      holds_sum: formatUsd(d.holds_sum),
      leased: formatUsd(d.leased),
      leases_sum: formatUsd(d.leases_sum),
      keys_leased: formatUsd(d.keys_leased),
      slices_sum: formatUsd(d.slices_sum),
    })),
  };
}

// Spend controls: the saved card, auto top-up, alerts.

export const CardSchema = z.strictObject({
  brand: z.string(),
  last4: z.string(),
  exp_month: z.number().int(),
  exp_year: z.number().int(),
}).meta({ id: "Card" });
export const CardDeletedSchema = CardSchema.extend({ deleted: z.literal(true) })
  .meta({ id: "CardDeleted" });

export const AutoTopupSchema = z.strictObject({
  enabled: z.boolean(),
  threshold: Usd,
  amount: Usd,
  monthly_cap: Usd,
  failures: z.number().int().meta({ description: "Consecutive failed attempts; 3 turn it off" }),
  this_month: Usd.meta({ description: "Credit auto top-up granted this UTC month" }),
  in_flight: z.boolean(),
  last: z.strictObject({
    outcome: z.enum(["succeeded", "failed"]),
    amount: Usd,
    payment_intent: z.string().nullable(),
    reason: z.string().nullable(),
    at: Time,
  }).nullable(),
}).meta({ id: "AutoTopup" });

export const ActiveAlertSchema = z.discriminatedUnion("type", [
  z.strictObject({ type: z.literal("balance.low"), balance: Usd, threshold: Usd }),
  z.strictObject({
    type: z.literal("key.limit_threshold"),
    key_id: z.string(),
    key_name: z.string(),
    threshold: z.number(),
    spend: Usd,
    credit_limit: Usd,
  }),
  z.strictObject({
    type: z.literal("auto_topup.failed"),
    amount: Usd,
    reason: z.string().nullable(),
    failures: z.number().int(),
    disabled: z.boolean(),
    at: Time,
  }),
  z.strictObject({
    type: z.literal("credits.refunded"),
    amount: Usd,
    description: z.string(),
    at: Time,
  }),
]).meta({ id: "ActiveAlert" });

export const AlertsSchema = z.strictObject({
  low_balance_threshold: Usd.nullable(),
  active: z.array(ActiveAlertSchema),
}).meta({ id: "Alerts" });
