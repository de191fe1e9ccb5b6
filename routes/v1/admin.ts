import { z } from "zod";
import type { AppEnv } from "../../lib/services.ts";
import { requireAdmin } from "../../lib/http/auth.ts";
import { ApiError, notFound } from "../../lib/errors.ts";
import { parseJson } from "../../lib/http/errors.ts";
import { idParam, parseId, usdAmount } from "../../lib/http/params.ts";
import {
  apiRoutes,
  documented,
  errorResponses,
  jsonBody,
  jsonResponse,
  SECURITY,
} from "../../lib/http/openapi.ts";
import {
  idempotency,
  IDEMPOTENCY_TTL_MS,
  type IdempotentReply,
  replay,
  storedReply,
} from "../../lib/http/idempotency.ts";
import { getAccount, getBalance, listAccounts, verifyBooks } from "../../lib/billing/accounts.ts";
import { createAccount } from "../../lib/onboarding.ts";
import {
  AccountCreatedSchema,
  accountJson,
  AccountSchema,
  LedgerEntrySchema,
  ledgerJson,
  listOf,
  verifyJson,
  VerifySchema,
} from "../../lib/http/presenters.ts";
import { creditEvent } from "../../lib/webhooks/events.ts";
import { MAX_EMAIL_CHARS } from "../../lib/auth/users.ts";
import type { Context } from "hono";
import { sealer } from "../../lib/crypto.ts";

export const AccountCreate = z.strictObject({
  name: z.string().trim().min(1, "must not be empty").max(200),
  email: z.email().max(MAX_EMAIL_CHARS).nullish(),
}).meta({ id: "AccountCreate" });
export const Adjustment = z.strictObject({
  amount: usdAmount.refine((v) => v !== 0n, "must not be zero")
    .meta({ description: "USD, signed: negative takes credit away" }),
  reason: z.string().trim().min(1, "must not be empty").max(500),
}).meta({ id: "Adjustment" });
export const Refund = z.strictObject({
  amount: usdAmount.refine((v) => v > 0n, "must be positive").meta({ description: "USD" }),
  reason: z.string().trim().min(1, "must not be empty").max(500),
  reference: z.string().trim().min(1).max(200).nullish(),
}).meta({ id: "Refund" });

const AccountPath = z.object({ id: idParam("acct") });
/** Admin writes replay by `Idempotency-Key`. */
const IdempotencyHeader = z.object({
  "idempotency-key": z.string().optional().meta({
    description: "The same key and body replay the first answer; another body is 409",
  }),
});

/**
 * The management key in a stored reply to an account creation is sealed under a key derived from
 * ADMIN_TOKEN: only a key's SHA-256 is kept in the clear, and only the operator, who alone can
 * replay the reply, can open it.
 */
const keySealer = (adminToken: string) => sealer("idempotent management key", adminToken);

/** A stored account-creation reply as it is answered: its sealed management key opened. */
function openedReply(stored: IdempotentReply, adminToken: string): IdempotentReply {
  const { management_key_sealed: sealed, ...body } = stored.body as Record<string, unknown>;
  if (typeof sealed !== "string") return stored;
  const secret = keySealer(adminToken).open(sealed);
  if (secret === null) {
    throw new ApiError(
      409,
      "idempotency_conflict",
      "This Idempotency-Key's answer was sealed under another ADMIN_TOKEN; use a new key",
    );
  }
  return { ...stored, body: { ...body, management_key: secret } };
}

/** A credit-moving admin write: an adjustment or a refund, replayable by Idempotency-Key. */
async function credit(
  c: Context<AppEnv>,
  type: "adjustment" | "refund",
  amount: bigint,
  description: string,
  reference: string | null,
  raw: string,
) {
  const svc = c.get("svc");
  const id = parseId("id", "acct", c.req.param("id") ?? "");
  if (!await getAccount(svc.kv, id)) throw notFound("The account");
  const idem = await idempotency(c, `admin:${type}:${id}`, raw);
  if (idem) {
    const stored = await storedReply(svc.kv, idem.key);
    if (stored) return replay(c, stored, idem);
  }
  const r = await svc.actors.submit(id, {
    kind: "credit",
    type,
    amount,
    description,
    reference,
    event: type === "refund" ? creditEvent(id, "credits.refunded", ledgerJson) : undefined,
    once: idem
      ? {
        key: idem.key,
        value: (entry): IdempotentReply => ({
          hash: idem.hash,
          status: 201,
          body: ledgerJson(entry),
        }),
        expireIn: IDEMPOTENCY_TTL_MS,
      }
      : undefined,
  });
  if (r.replayed) return replay(c, r.stored, idem!);
  return c.json(ledgerJson(r.entry), 201);
}

/** The operator's API: accounts, adjustments, refunds and the books check. */
export default function adminRoutes() {
  const app = apiRoutes();
  for (const path of ["/admin", "/admin/*"]) app.use(path, requireAdmin);
  const security = SECURITY.admin;
  const refusals = errorResponses(400, 401, 503);

  documented(app, {
    method: "post",
    path: "/admin/accounts",
    tags: ["Admin"],
    summary: "A new account and its first management key (shown this once)",
    security,
    request: { body: jsonBody(AccountCreate), headers: IdempotencyHeader },
    responses: {
      201: jsonResponse(AccountCreatedSchema, "The account"),
      ...refusals,
      ...errorResponses(409),
    },
  }, async (c) => {
    const svc = c.get("svc");
    // The answer (first or replayed) carries the management key: no cache may keep a copy.
    c.header("cache-control", "no-store");
    const raw = await c.req.text();
    const body = parseJson(raw, AccountCreate);
    const idem = await idempotency(c, "admin:accounts", raw);
    const adminToken = svc.config.adminToken!;
    for (let attempt = 0; attempt < 5; attempt++) {
      if (idem) {
        const stored = await storedReply(svc.kv, idem.key);
        if (stored) return replay(c, openedReply(stored, adminToken), idem);
      }
      const created = await createAccount(
        svc.kv,
        { name: body.name, email: body.email ?? null },
        svc.now(),
        (atomic, r) => {
          if (!idem) return;
          const reply: IdempotentReply = {
            hash: idem.hash,
            status: 201,
            body: {
              id: r.account.id,
              name: r.account.name,
              email: r.account.email,
              management_key_sealed: keySealer(adminToken).seal(r.secret),
            },
          };
          atomic.check({ key: idem.key, versionstamp: null })
            .set(idem.key, reply, { expireIn: IDEMPOTENCY_TTL_MS });
        },
      );
      if (created) {
        return c.json({
          id: created.account.id,
          name: created.account.name,
          email: created.account.email,
          management_key: created.secret,
        }, 201);
      }
    }
    throw new ApiError(409, "conflict", "The account could not be created; try again");
  });

  documented(app, {
    method: "get",
    path: "/admin/accounts",
    tags: ["Admin"],
    summary: "Every account with its balance",
    security,
    responses: {
      200: jsonResponse(listOf(AccountSchema), "The accounts"),
      ...refusals,
    },
  }, async (c) => {
    const all = await listAccounts(c.get("svc").kv);
    return c.json({ data: all.map(({ account, balance }) => accountJson(account, balance)) });
  });

  documented(app, {
    method: "get",
    path: "/admin/accounts/{id}",
    tags: ["Admin"],
    summary: "One account with its balance",
    security,
    request: { params: AccountPath },
    responses: {
      200: jsonResponse(AccountSchema, "The account"),
      ...refusals,
      ...errorResponses(404),
    },
  }, async (c) => {
    const kv = c.get("svc").kv;
    const account = await getAccount(kv, parseId("id", "acct", c.req.param("id") ?? ""));
    if (!account) throw notFound("The account");
    return c.json(accountJson(account, await getBalance(kv, account.id)));
  });

  documented(app, {
    method: "post",
    path: "/admin/accounts/{id}/adjustments",
    tags: ["Admin"],
    summary: "Grants (or, negative, takes back) credit: an adjustment in the ledger",
    security,
    request: { params: AccountPath, body: jsonBody(Adjustment), headers: IdempotencyHeader },
    responses: {
      201: jsonResponse(LedgerEntrySchema, "The ledger entry"),
      ...refusals,
      ...errorResponses(404, 409),
    },
  }, async (c) => {
    const raw = await c.req.text();
    const body = parseJson(raw, Adjustment);
    return credit(c, "adjustment", body.amount, body.reason, null, raw);
  });

  documented(app, {
    method: "post",
    path: "/admin/accounts/{id}/refunds",
    tags: ["Admin"],
    summary: "Gives credit back: a refund in the ledger",
    security,
    request: { params: AccountPath, body: jsonBody(Refund), headers: IdempotencyHeader },
    responses: {
      201: jsonResponse(LedgerEntrySchema, "The ledger entry"),
      ...refusals,
      ...errorResponses(404, 409),
    },
  }, async (c) => {
    const raw = await c.req.text();
    const body = parseJson(raw, Refund);
    return credit(c, "refund", body.amount, body.reason, body.reference ?? null, raw);
  });

  documented(app, {
    method: "get",
    path: "/admin/verify",
    tags: ["Admin"],
    summary: "The books checked: Σ ledger = balance and reserved = Σ holds, every account",
    security,
    responses: { 200: jsonResponse(VerifySchema, "The check"), ...refusals },
  }, async (c) => c.json(verifyJson(await verifyBooks(c.get("svc").kv))));
  documented(app, {
    method: "get",
    path: "/admin/stats",
    tags: ["Admin"],
    summary: "This process's counters since it started (another process answers for itself)",
    security,
    responses: {
      200: jsonResponse(
        z.strictObject({
          kv: z.record(z.string(), z.number().int()).meta({ description: "KV commits" }),
          actors: z.record(z.string(), z.number().int()).meta({
            description: "The account actors' commits, conflicts and lease events",
          }),
        }).meta({ id: "ProcessStats" }),
        "Plain integers",
      ),
      ...refusals,
    },
  }, (c) => {
    const svc = c.get("svc");
    return c.json({ kv: svc.kvStats, actors: svc.actors.stats });
  });

  return app;
}
