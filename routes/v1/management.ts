import { Hono } from "hono";
import { z } from "zod";
import type { AppEnv } from "../../lib/services.ts";
import { commitRetrying } from "../../lib/kv/util.ts";
import { requireKey } from "../../lib/http/auth.ts";
import { ApiError, badRequest, notFound } from "../../lib/errors.ts";
import { readJson } from "../../lib/http/errors.ts";
import {
  isoTimeMs,
  parseCursor,
  parseId,
  parseLimit,
  parseRequestId,
  parseTime,
  usageParams,
  usdAmount,
} from "../../lib/http/params.ts";
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
import { creditsJson, keyJson, ledgerJson, usageJson } from "../../lib/http/presenters.ts";
import type { Context } from "hono";

const futureTime = z.string().refine((v) => Number.isFinite(isoTimeMs(v)), "must be an ISO time")
  .refine((v) => isoTimeMs(v) > Date.now(), "must be in the future")
  .transform((v) => new Date(isoTimeMs(v)).toISOString());
const limitReset = z.enum(["daily", "weekly", "monthly"]).nullable();
const rpm = z.number().int().min(1).max(1_000_000).nullable();
const name = z.string().trim().min(1, "must not be empty").max(100);

const createSchema = z.strictObject({
  name,
  scope: z.enum(["inference", "management"]).default("inference"),
  credit_limit: usdAmount.refine((v) => v >= 0n, "must not be negative").nullable().optional(),
  limit_reset: limitReset.optional(),
  expires_at: futureTime.nullable().optional(),
  rate_limit_rpm: rpm.optional(),
});

const patchSchema = z.strictObject({
  name: name.optional(),
  credit_limit: usdAmount.refine((v) => v >= 0n, "must not be negative").nullable().optional(),
  limit_reset: limitReset.optional(),
  disabled: z.boolean().optional(),
  rate_limit_rpm: rpm.optional(),
  expires_at: futureTime.nullable().optional(),
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
  return usageJson(
    await queryUsage(c.get("svc").kv, {
      accountId: c.get("accountId"),
      keyId,
      now,
      ...usageParams((n) => c.req.query(n), now),
    }),
  );
}

function auditFilter(c: Context<AppEnv>): AuditFilter {
  const q = (n: string) => c.req.query(n) || undefined;
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
  const app = new Hono<AppEnv>();
  for (
    const path of ["/keys", "/keys/*", "/credits", "/transactions", "/usage", "/audit", "/audit/*"]
  ) {
    app.use(path, requireKey("management"));
  }

  app.get("/keys", async (c) => {
    const keys = await listKeysByAccount(c.get("svc").kv, c.get("accountId"));
    return c.json({
      data: keys.filter(({ key }) => key.revoked_at === null).map(({ key, spend }) =>
        keyJson(key, spend)
      ),
    });
  });

  app.post("/keys", async (c) => {
    const body = await readJson(c, createSchema);
    if (body.limit_reset && (body.credit_limit === undefined || body.credit_limit === null)) {
      throw badRequest("Invalid 'limit_reset': needs a credit_limit");
    }
    const svc = c.get("svc");
    const { key, secret } = await createKey(svc.kv, c.get("accountId"), body, svc.now());
    // The secret is shown once: no cache along the way may keep a copy.
    return c.json({ ...keyJson(key), key: secret }, 201, { "cache-control": "no-store" });
  });

  app.get("/keys/:id", async (c) => {
    const { value: key } = await ownKey(c);
    return c.json(keyJson(key, await getKeySpend(c.get("svc").kv, key.account_id, key.id)));
  });

  app.patch("/keys/:id", async (c) => {
    const svc = c.get("svc");
    const patch = await readJson(c, patchSchema);
    for (let attempt = 0; attempt < 20; attempt++) {
      const entry = await ownKey(c);
      if (entry.value.revoked_at) throw notFound("The key");
      const next: ApiKey = { ...entry.value, ...patch } as ApiKey;
      if (next.limit_reset && next.credit_limit === null) {
        throw badRequest("Invalid 'limit_reset': needs a credit_limit");
      }
      const res = await commitRetrying(svc.kv.atomic().check(entry).set(entry.key, next));
      if (res.ok) {
        svc.keys.forget(next.hash);
        svc.actors.forgetKey(next.account_id, next.id);
        return c.json(keyJson(next, await getKeySpend(svc.kv, next.account_id, next.id)));
      }
    }
    throw new ApiError(409, "conflict", "The key changed while it was being updated; try again");
  });

  app.delete("/keys/:id", async (c) => {
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

  app.get("/keys/:id/usage", async (c) => {
    const { value: key } = await ownKey(c);
    return c.json(await usageQuery(c, key.id));
  });

  app.get("/credits", async (c) => {
    return c.json(creditsJson(await getBalance(c.get("svc").kv, c.get("accountId"))));
  });

  app.get("/transactions", async (c) => {
    const type = c.req.query("type");
    const types = ["purchase", "usage_debit", "adjustment", "refund"];
    if (type !== undefined && !types.includes(type)) {
      throw badRequest(`Invalid 'type': must be one of ${types.join(", ")}`);
    }
    const page = await listLedgerByAccount(c.get("svc").kv, c.get("accountId"), {
      type: type as LedgerType | undefined,
      limit: parseLimit(c.req.query("limit")),
      cursor: parseCursor(c.req.query("cursor")),
    });
    return c.json({ data: page.data.map(ledgerJson), next_cursor: page.next_cursor });
  });

  app.get("/usage", async (c) => c.json(await usageQuery(c)));

  app.get("/audit/export", (c) => {
    const format = c.req.query("format") ?? "csv";
    if (format !== "csv" && format !== "json") {
      throw badRequest("Invalid 'format': must be csv or json");
    }
    const f = auditFilter(c);
    const stamp = new Date(c.get("svc").now()).toISOString().slice(0, 10);
    return c.body(exportAudit(c.get("svc").kv, c.get("accountId"), f, format), 200, {
      "content-type": format === "csv"
        ? "text/csv; charset=utf-8"
        : "application/json; charset=utf-8",
      "content-disposition": `attachment; filename="audit-${stamp}.${format}"`,
    });
  });

  app.get("/audit", async (c) => {
    const page = await listAuditByAccount(
      c.get("svc").kv,
      c.get("accountId"),
      auditFilter(c),
      parseLimit(c.req.query("limit")),
      parseCursor(c.req.query("cursor")),
    );
    return c.json(page);
  });

  app.get("/audit/:request_id", async (c) => {
    const svc = c.get("svc");
    const accountId = c.get("accountId");
    const requestId = parseRequestId("request_id", c.req.param("request_id"));
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
