import { createMiddleware } from "hono/factory";
import type { AppEnv } from "../services.ts";
import { checkKey } from "../auth/keys.ts";
import type { ApiKey, KeyScope } from "../billing/types.ts";
import { ApiError } from "../errors.ts";
import { safeEqual } from "../crypto.ts";
import type { Context } from "hono";
import { checkCsrf, getSession, sessionToken } from "../auth/sessions.ts";
import { getMembership } from "../auth/users.ts";
import { keyLookup } from "../telemetry/inference.ts";

/**
 * The presented secret: `Authorization: Bearer …` or `x-api-key` (the Anthropic SDK's header).
 *
 * @example
 * ```ts
 * presentedSecret(c.req.raw); // "er-…", from Authorization: Bearer or x-api-key
 * ```
 */
export function presentedSecret(req: Request): string | null {
  const auth = req.headers.get("authorization");
  if (auth) {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    return m ? m[1] : null;
  }
  return req.headers.get("x-api-key");
}

/**
 * The account of the request's dashboard session, or null without one. A state-changing request
 * must also pass the CSRF check (same origin, `x-csrf-token` header), else 403.
 */
async function sessionAccount(c: Context<AppEnv>): Promise<string | null> {
  const svc = c.get("svc");
  const token = sessionToken(c.req.raw, svc.config.publicUrl ?? c.req.url);
  const session = await getSession(svc.kv, token, svc.now());
  if (!session || session.kind !== "user" || !session.account_id || !session.user_id) return null;
  if (!await getMembership(svc.kv, session.account_id, session.user_id)) return null;
  const method = c.req.method;
  if (method !== "GET" && method !== "HEAD") {
    const origins = svc.config.publicUrl ? [new URL(svc.config.publicUrl).origin] : [];
    if (!checkCsrf(c.req.raw, session, c.req.header("x-csrf-token"), origins)) {
      throw new ApiError(
        403,
        "forbidden",
        "Cross-site request refused: missing or wrong CSRF token",
      );
    }
  }
  return session.account_id;
}

/**
 * The key a refused request is audited under: one of `scope` that is live or only disabled (its
 * account is known); null for no key, an unknown, revoked or expired one, or one of another scope.
 */
export function auditableKey(found: ApiKey | null, scope: KeyScope, now: number): ApiKey | null {
  if (!found || found.scope !== scope) return null;
  const check = checkKey(found, now);
  return check.ok || check.code === "key_disabled" ? found : null;
}

/**
 * Requires a live key of `scope` (or, for management, a dashboard session); sets `accountId`, and `key` when one was presented.
 *
 * @example
 * ```ts
 * app.use("/billing/*", requireKey("management"));
 * ```
 */
export const requireKey = (scope: KeyScope) =>
  createMiddleware<AppEnv>(async (c, next) => {
    const svc = c.get("svc");
    const secret = presentedSecret(c.req.raw);
    if (!secret && scope === "management") {
      // A dashboard session acts as its account on the management API.
      const accountId = await sessionAccount(c);
      if (accountId) {
        c.set("accountId", accountId);
        return await next();
      }
    }
    if (!secret) {
      throw new ApiError(
        401,
        "invalid_api_key",
        "Missing API key: send Authorization: Bearer <key>",
      );
    }
    // A management call reads the key afresh: one revoked by another process is refused at once.
    const found = await keyLookup(() => svc.keys.resolve(secret, scope === "management"));
    const check = checkKey(found, svc.now());
    if (!check.ok) {
      throw check.code === "key_disabled"
        ? new ApiError(403, "key_disabled", "This API key is disabled")
        : new ApiError(401, "invalid_api_key", "The API key is invalid, revoked or expired");
    }
    if (check.key.scope !== scope) {
      throw new ApiError(
        403,
        "forbidden",
        scope === "inference"
          ? "A management key cannot call the inference API; use an inference key"
          : "An inference key cannot call the management API; use a management key",
      );
    }
    c.set("key", check.key);
    c.set("accountId", check.key.account_id);
    await next();
  });

/**
 * Requires the operator's `ADMIN_TOKEN`; 503 until one is configured.
 *
 * @example
 * ```ts
 * app.use("/admin/*", requireAdmin);
 * ```
 */
export const requireAdmin = createMiddleware<AppEnv>(async (c, next) => {
  const token = c.get("svc").config.adminToken;
  if (!token) throw new ApiError(503, "admin_disabled", "The admin API is off: set ADMIN_TOKEN");
  const secret = presentedSecret(c.req.raw);
  if (!secret || !safeEqual(secret, token)) {
    throw new ApiError(401, "invalid_api_key", "The admin token is missing or wrong");
  }
  await next();
});
