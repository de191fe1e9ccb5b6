import { z } from "zod";
import type { Context } from "hono";
import type { AppEnv } from "../../lib/services.ts";
import { commitRetrying } from "../../lib/kv/util.ts";
import { requireKey } from "../../lib/http/auth.ts";
import { ApiError, badRequest, notFound } from "../../lib/errors.ts";
import { readJson } from "../../lib/http/errors.ts";
import {
  idParam,
  isoTimeMs,
  PageQuery,
  parseCursor,
  parseId,
  parseLimit,
  parseRequestId,
  parseTime,
  queryParam,
  usageParams,
  UsageQuery,
  usdAmount,
} from "../../lib/http/params.ts";
import {
  apiRoutes,
  documented,
  errorResponses,
  jsonBody,
  jsonResponse,
  readQuery,
  SECURITY,
} from "../../lib/http/openapi.ts";
import { createKey, getKeySpend, listKeysByAccount } from "../../lib/auth/keys.ts";
import { apiKeyKey } from "../../lib/kv/schema.ts";
import { getBalance } from "../../lib/billing/accounts.ts";
import { listLedgerByAccount } from "../../lib/billing/ledger.ts";
import { auditJson } from "../../lib/audit/row.ts";
import {
  type AuditFilter,
  exportAudit,
  getAuditAttempts,
  getAuditRow,
  listAuditByAccount,
} from "../../lib/audit/query.ts";
import { queryUsage } from "../../lib/usage/query.ts";
import type { ApiKey, LedgerType } from "../../lib/billing/types.ts";
import {
  AuditPageSchema,
  AuditRowAttemptsSchema,
  creditsJson,
  CreditsSchema,
  DeletedSchema,
  KeyCreatedSchema,
  keyJson,
  KeySchema,
  LedgerEntrySchema,
  ledgerJson,
  LedgerPageSchema,
  listOf,
  usageJson,
  UsageSchema,
} from "../../lib/http/presenters.ts";

/** An ISO time, as an ISO string in UTC (that it is in the future is the handler's check). */
const isoTime = z.string().refine((v) => Number.isFinite(isoTimeMs(v)), "must be an ISO time")
  .transform((v) => new Date(isoTimeMs(v)).toISOString());
const limitReset = z.enum(["daily", "weekly", "monthly"]).nullable();
const rpm = z.number().int().min(1).max(1_000_000).nullable();
const name = z.string().trim().min(1, "must not be empty").max(100);
const creditLimit = usdAmount.refine((v) => v >= 0n, "must not be negative").nullable()
  .meta({ description: "USD (a decimal string or number); null for none" });

/**
 * A key's alert thresholds: fractions of its credit limit (0.8 is 80 %), above 0 and at most 1,
 * with at most 4 decimals, each once; stored as basis points, ascending.
 */
const alertThresholds = z.array(
  z.number().gt(0, "must be above 0").max(1, "must be at most 1 (100 %)")
    .refine((f) => Math.abs(f * 10_000 - Math.round(f * 10_000)) < 1e-6, "at most 4 decimals"),
).max(10, "at most 10 thresholds")
  .transform((fs) => [...new Set(fs.map((f) => Math.round(f * 10_000)))].sort((a, b) => a - b))
  .meta({
    description: "Fractions of the credit limit that fire key.limit_threshold (default [0.8, 1])",
  });

export const KeyCreate = z.strictObject({
  name,
  scope: z.enum(["inference", "management"]).default("inference"),
  credit_limit: creditLimit.optional(),
  limit_reset: limitReset.optional().meta({ description: "Needs a credit_limit" }),
  expires_at: isoTime.nullable().optional().meta({ description: "An ISO time in the future" }),
  rate_limit_rpm: rpm.optional(),
  alert_thresholds: alertThresholds.optional(),
}).meta({ id: "KeyCreate" });

export const KeyPatch = z.strictObject({
  name: name.optional(),
  credit_limit: creditLimit.optional(),
  limit_reset: limitReset.optional(),
  disabled: z.boolean().optional(),
  rate_limit_rpm: rpm.optional(),
  expires_at: isoTime.nullable().optional(),
  alert_thresholds: alertThresholds.optional(),
}).meta({ id: "KeyPatch" });

/** An expiry must lie ahead of the router's clock. */
function checkFuture(c: Context<AppEnv>, expiresAt: string | null | undefined) {
  if (expiresAt && Date.parse(expiresAt) <= c.get("svc").now()) {
    throw badRequest("Invalid 'expires_at': must be in the future");
  }
}

const KeyPath = z.object({ id: idParam("key") });
const AuditQuery = z.object({
  from: queryParam("Rows at or after this ISO date or time"),
  to: queryParam("Rows before this ISO date or time (a date includes its whole day)"),
  key_id: queryParam("One key's rows"),
  provider: queryParam("One provider's rows"),
  model: queryParam("One model's rows"),
  status: queryParam("Rows answered with this HTTP status"),
  streaming: queryParam("Streamed rows (true) or not (false)", { enum: ["true", "false"] }),
});
const TransactionsQuery = z.object({
  type: queryParam("One type of entry", { enum: LedgerEntrySchema.shape.type.options }),
  ...PageQuery.shape,
});

async function ownKey(c: Context<AppEnv>): Promise<Deno.KvEntry<ApiKey>> {
  const svc = c.get("svc");
  const id = parseId("id", "key", c.req.param("id") ?? "");
  const entry = await svc.kv.get<ApiKey>(apiKeyKey(id));
  // Another account's key is reported exactly like a missing one.
  if (!entry.value || entry.value.account_id !== c.get("accountId")) throw notFound("The key");
  return entry as Deno.KvEntry<ApiKey>;
}

/** A usage query of the caller's account (and one key), from the request's parameters. */
async function usageQuery(c: Context<AppEnv>, keyId?: string) {
  const now = c.get("svc").now();
  const q = readQuery(c, UsageQuery);
  return usageJson(
    await queryUsage(c.get("svc").kv, {
      accountId: c.get("accountId"),
      keyId,
      now,
      ...usageParams((n) => q[n as keyof typeof q], now),
    }),
  );
}

/** The audit trail's filters (`AuditQuery`), checked. */
function auditFilter(query: z.output<typeof AuditQuery>): AuditFilter {
  const q = (n: keyof typeof query) => query[n] || undefined;
  const status = q("status");
  if (status !== undefined && !/^\d{3}$/.test(status)) {
    throw badRequest("Invalid 'status': must be an HTTP status code");
  }
  const streaming = q("streaming");
  if (streaming !== undefined && streaming !== "true" && streaming !== "false") {
    throw badRequest("Invalid 'streaming': must be true or false");
  }
  const keyId = q("key_id");
  const from = q("from"), to = q("to");
  // The period is [from, to): a date alone as `to` includes that whole day.
  let toMs = to ? parseTime("to", to) : Number.MAX_SAFE_INTEGER;
  if (to && /^\d{4}-\d{2}-\d{2}$/.test(to)) toMs += 86_400_000;
  const fromMs = from ? parseTime("from", from) : 0;
  if (fromMs >= toMs) throw badRequest("Invalid 'from': must be before 'to'");
  return {
    fromMs,
    toMs,
    key_id: keyId === undefined ? undefined : parseId("key_id", "key", keyId),
    provider: q("provider"),
    model: q("model"),
    status: status === undefined ? undefined : Number(status),
    streaming: streaming === undefined ? undefined : streaming === "true",
  };
}

/** The management API: keys, credits, ledger, usage and the audit trail of the caller's account. */
export default function managementRoutes() {
  const app = apiRoutes();
  for (
    const path of ["/keys", "/keys/*", "/credits", "/transactions", "/usage", "/audit", "/audit/*"]
  ) {
    app.use(path, requireKey("management"));
  }
  const security = SECURITY.management;
  const refusals = errorResponses(400, 401, 403);

  documented(app, {
    method: "get",
    path: "/keys",
    tags: ["Keys"],
    summary: "The account's live keys",
    security,
    responses: {
      200: jsonResponse(listOf(KeySchema), "The keys"),
      ...refusals,
    },
  }, async (c) => {
    const svc = c.get("svc");
    const keys = await listKeysByAccount(svc.kv, c.get("accountId"), svc.now());
    return c.json({
      data: keys.filter(({ key }) => key.revoked_at === null).map(({ key, spend }) =>
        keyJson(key, spend)
      ),
    });
  });

  documented(app, {
    method: "post",
    path: "/keys",
    tags: ["Keys"],
    summary: "A new key; its secret is shown this once",
    security,
    request: { body: jsonBody(KeyCreate) },
    responses: { 201: jsonResponse(KeyCreatedSchema, "The key and its secret"), ...refusals },
  }, async (c) => {
    const { alert_thresholds, ...body } = await readJson(c, KeyCreate);
    checkFuture(c, body.expires_at);
    if (body.limit_reset && (body.credit_limit === undefined || body.credit_limit === null)) {
      throw badRequest("Invalid 'limit_reset': needs a credit_limit");
    }
    const svc = c.get("svc");
    const { key, secret } = await createKey(svc.kv, c.get("accountId"), {
      ...body,
      alert_bp: alert_thresholds,
    }, svc.now());
    // The secret is shown once: no cache along the way may keep a copy.
    return c.json({ ...keyJson(key), key: secret }, 201, { "cache-control": "no-store" });
  });

  documented(app, {
    method: "get",
    path: "/keys/{id}",
    tags: ["Keys"],
    summary: "One key",
    security,
    request: { params: KeyPath },
    responses: { 200: jsonResponse(KeySchema, "The key"), ...refusals, ...errorResponses(404) },
  }, async (c) => {
    const { value: key } = await ownKey(c);
    const svc = c.get("svc");
    return c.json(keyJson(key, await getKeySpend(svc.kv, key, svc.now())));
  });

  documented(app, {
    method: "patch",
    path: "/keys/{id}",
    tags: ["Keys"],
    summary: "Changes a key's name, limits, expiry or disabled flag",
    security,
    request: { params: KeyPath, body: jsonBody(KeyPatch) },
    responses: {
      200: jsonResponse(KeySchema, "The key as changed"),
      ...refusals,
      ...errorResponses(404, 409),
    },
  }, async (c) => {
    const svc = c.get("svc");
    const { alert_thresholds, ...patch } = await readJson(c, KeyPatch);
    checkFuture(c, patch.expires_at);
    for (let attempt = 0; attempt < 20; attempt++) {
      const entry = await ownKey(c);
      if (entry.value.revoked_at) throw notFound("The key");
      const next: ApiKey = {
        ...entry.value,
        ...patch,
        ...(alert_thresholds ? { alert_bp: alert_thresholds } : {}),
      } as ApiKey;
      if (next.limit_reset && next.credit_limit === null) {
        throw badRequest("Invalid 'limit_reset': needs a credit_limit");
      }
      const res = await commitRetrying(svc.kv.atomic().check(entry).set(entry.key, next));
      if (res.ok) {
        svc.keys.forget(next.hash);
        svc.actors.forgetKey(next.account_id, next.id);
        return c.json(keyJson(next, await getKeySpend(svc.kv, next, svc.now())));
      }
    }
    throw new ApiError(409, "conflict", "The key changed while it was being updated; try again");
  });

  documented(app, {
    method: "delete",
    path: "/keys/{id}",
    tags: ["Keys"],
    summary: "Revokes a key",
    security,
    request: { params: KeyPath },
    responses: {
      200: jsonResponse(DeletedSchema, "Revoked"),
      ...refusals,
      ...errorResponses(404, 409),
    },
  }, async (c) => {
    const svc = c.get("svc");
    for (let attempt = 0; attempt < 20; attempt++) {
      const entry = await ownKey(c);
      if (entry.value.revoked_at) return c.json({ id: entry.value.id, deleted: true });
      const next = { ...entry.value, revoked_at: new Date(svc.now()).toISOString() };
      const res = await commitRetrying(svc.kv.atomic().check(entry).set(entry.key, next));
      if (res.ok) {
        svc.keys.forget(next.hash);
        svc.actors.forgetKey(next.account_id, next.id);
        return c.json({ id: next.id, deleted: true });
      }
    }
    throw new ApiError(409, "conflict", "The key changed while it was being revoked; try again");
  });

  documented(app, {
    method: "get",
    path: "/keys/{id}/usage",
    tags: ["Usage"],
    summary: "One key's usage",
    security,
    request: { params: KeyPath, query: UsageQuery },
    responses: { 200: jsonResponse(UsageSchema, "Usage"), ...refusals, ...errorResponses(404) },
  }, async (c) => {
    const { value: key } = await ownKey(c);
    return c.json(await usageQuery(c, key.id));
  });

  documented(app, {
    method: "get",
    path: "/credits",
    tags: ["Credits"],
    summary: "The account's balance",
    security,
    responses: { 200: jsonResponse(CreditsSchema, "The balance"), ...refusals },
  }, async (c) => {
    return c.json(creditsJson(await getBalance(c.get("svc").kv, c.get("accountId"))));
  });

  documented(app, {
    method: "get",
    path: "/transactions",
    tags: ["Credits"],
    summary: "The ledger, newest first",
    security,
    request: { query: TransactionsQuery },
    responses: { 200: jsonResponse(LedgerPageSchema, "A page of the ledger"), ...refusals },
  }, async (c) => {
    const q = readQuery(c, TransactionsQuery);
    const types: readonly string[] = LedgerEntrySchema.shape.type.options;
    if (q.type !== undefined && !types.includes(q.type)) {
      throw badRequest(`Invalid 'type': must be one of ${types.join(", ")}`);
    }
    const page = await listLedgerByAccount(c.get("svc").kv, c.get("accountId"), {
      type: q.type as LedgerType | undefined,
      limit: parseLimit(q.limit),
      cursor: parseCursor(q.cursor),
    });
    return c.json({ data: page.data.map(ledgerJson), next_cursor: page.next_cursor });
  });

  documented(app, {
    method: "get",
    path: "/usage",
    tags: ["Usage"],
    summary: "Usage of a period: the summary and a breakdown",
    security,
    request: { query: UsageQuery },
    responses: { 200: jsonResponse(UsageSchema, "Usage"), ...refusals },
  }, async (c) => c.json(await usageQuery(c)));

  const ExportQuery = AuditQuery.extend({
    format: queryParam("The download's format (default csv)", { enum: ["csv", "json"] }),
  });
  documented(app, {
    method: "get",
    path: "/audit/export",
    tags: ["Usage"],
    summary: "Every matching audit row, streamed as CSV or a JSON array",
    security,
    request: { query: ExportQuery },
    responses: {
      200: {
        description: "The rows (RFC 4180 CSV under the audit header, or a JSON array)",
        content: {
          "text/csv": { schema: z.string() },
          "application/json": { schema: z.array(AuditPageSchema.shape.data.element) },
        },
      },
      ...refusals,
    },
  }, (c) => {
    const q = readQuery(c, ExportQuery);
    const format = q.format ?? "csv";
    if (format !== "csv" && format !== "json") {
      throw badRequest("Invalid 'format': must be csv or json");
    }
    const f = auditFilter(q);
    const stamp = new Date(c.get("svc").now()).toISOString().slice(0, 10);
    return c.body(exportAudit(c.get("svc").kv, c.get("accountId"), f, format), 200, {
      "content-type": format === "csv"
        ? "text/csv; charset=utf-8"
        : "application/json; charset=utf-8",
      "content-disposition": `attachment; filename="audit-${stamp}.${format}"`,
    });
  });

  const AuditListQuery = AuditQuery.extend(PageQuery.shape);
  documented(app, {
    method: "get",
    path: "/audit",
    tags: ["Usage"],
    summary: "The audit trail, newest first",
    security,
    request: { query: AuditListQuery },
    responses: { 200: jsonResponse(AuditPageSchema, "A page of audit rows"), ...refusals },
  }, async (c) => {
    const q = readQuery(c, AuditListQuery);
    const filter = auditFilter(q);
    const page = await listAuditByAccount(
      c.get("svc").kv,
      c.get("accountId"),
      filter,
      parseLimit(q.limit),
      parseCursor(q.cursor),
    );
    return c.json(page);
  });

  documented(app, {
    method: "get",
    path: "/audit/{request_id}",
    tags: ["Usage"],
    summary: "One request's audit row, with its failed attempts",
    security,
    request: {
      params: z.object({
        request_id: z.string().meta({ description: "The reply's x-request-id" }),
      }),
    },
    responses: {
      200: jsonResponse(AuditRowAttemptsSchema, "The row"),
      ...refusals,
      ...errorResponses(404),
    },
  }, async (c) => {
    const svc = c.get("svc");
    const accountId = c.get("accountId");
    const requestId = parseRequestId("request_id", c.req.param("request_id") ?? "");
    const [row, attempts] = await Promise.all([
      getAuditRow(svc.kv, accountId, requestId),
      getAuditAttempts(svc.kv, accountId, requestId),
    ]);
    if (!row) throw notFound("The audit row");
    // The failed attempts before it (retries, fallbacks), each under `{request_id}.N`.
    return c.json({ ...auditJson(row), attempts: attempts.map(auditJson) });
  });

  return app;
}
