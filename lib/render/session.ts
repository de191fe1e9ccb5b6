/** What the sign-in, sign-up and operator sign-in pages do alike: limit attempts, start a session. */
import type { PageCtx } from "./page.tsx";
import {
  countSigninAttempt,
  countSigninFailure,
  createSession,
  deleteSession,
  SESSION_TTL_MS,
  sessionCookie,
  type SessionSpec,
} from "../auth/sessions.ts";
import { clientIp } from "../http/client.ts";

/**
 * Only same-site paths are followed after sign-in or sign-up; anything else means the dashboard.
 * A browser drops tabs and newlines from a URL before reading it ("/\t/evil" is "//evil") and
 * reads a backslash as a slash, so control characters are refused and the path must resolve here.
 */
export const safeNext = (v: string | null | undefined): string => {
  // deno-lint-ignore no-control-regex
  if (!v || !v.startsWith("/") || /[\x00-\x1f\x7f]/.test(v)) return "/dashboard";
  if (v.startsWith("//") || v.startsWith("/\\")) return "/dashboard";
  const base = "http://next.invalid";
  return new URL(v, base).origin === base ? v : "/dashboard";
};

/** `path` carrying the return address `next` along, unless it is the default. */
export const withNext = (path: string, next: string): string =>
  next === "/dashboard" ? path : `${path}?next=${encodeURIComponent(next)}`;

/**
 * Counts one sign-in attempt from the request's IP; false (with Retry-After set on the reply)
 * when the address has used up its attempts.
 *
 * @example
 * ```ts
 * if (!await allowSigninAttempt(ctx)) return { data: { error: "Too many attempts" }, status: 429 };
 * ```
 */
export async function allowSigninAttempt(ctx: PageCtx): Promise<boolean> {
  const limit = await countSigninAttempt(ctx.svc.kv, clientIp(ctx.c) || "unknown", ctx.svc.now());
  if (!limit.ok) ctx.c.header("retry-after", String(limit.retryAfterS));
  return limit.ok;
}

/**
 * Counts a sign-in for `email` as failed until the caller, having found the password right, calls
 * `succeeded`; `ok` false (with Retry-After set on the reply) when the email has used up its
 * failed attempts, whether or not a user has it.
 */
export async function allowEmailAttempt(
  ctx: PageCtx,
  email: string,
): Promise<{ ok: boolean; succeeded: () => Promise<void> }> {
  const limit = await countSigninFailure(ctx.svc.kv, email, ctx.svc.now());
  if (!limit.ok) ctx.c.header("retry-after", String(limit.retryAfterS));
  return limit;
}

/**
 * Ends whatever session the browser had and starts a fresh one, set as the session cookie: a
 * token planted before sign-in is worth nothing after.
 *
 * @example
 * ```ts
 * await startSession(ctx, { kind: "user", user_id: user.id, account_id: accountId });
 * ```
 */
export async function startSession(
  ctx: PageCtx,
  spec: SessionSpec,
  ttlMs = SESSION_TTL_MS,
): Promise<void> {
  await deleteSession(ctx.svc.kv, ctx.viewer?.token);
  const { token } = await createSession(ctx.svc.kv, spec, ctx.svc.now(), ttlMs);
  ctx.c.header("set-cookie", sessionCookie(ctx.siteUrl, token, ttlMs / 1000));
}
