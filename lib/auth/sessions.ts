import { hashSecret, pbkdf2Sha256, randomToken, safeEqual } from "../crypto.ts";
import { sessionKey, signinAttemptsKey, signinFailuresKey } from "../kv/schema.ts";
import { signinClient } from "../net.ts";
import { countInWindow } from "../kv/util.ts";
import { normalizeEmail } from "./users.ts";

/** A dashboard session: a signed-in user working in one account, or the operator. */
export interface Session {
  kind: "user" | "admin";
  user_id: string | null;
  account_id: string | null;
  /** The per-session CSRF token every state-changing request must echo. */
  csrf: string;
  created_ms: number;
  expires_ms: number;
  /**
   * An operator session's tag of the ADMIN_TOKEN it was opened with (`adminTokenTag`): once the
   * operator changes the token, the session is refused.
   */
  admin_tag?: string;
}

export const SESSION_TTL_MS = 7 * 86_400_000;
/** The cookie's name: the `__Host-` prefix pins it to this origin, path / and Secure. */
export const SESSION_COOKIE = "__Host-session";
/** Over plain http beyond loopback a browser refuses `__Host-` cookies: the unprefixed fallback. */
export const PLAIN_SESSION_COOKIE = "session";

/** What a new session is: a user's in one account, or the operator's (with `admin_tag`). */
export interface SessionSpec {
  kind: "user" | "admin";
  user_id?: string;
  account_id?: string;
  admin_tag?: string;
}

/**
 * Creates a session (7 days unless `ttlMs` says otherwise) and returns the cookie token, stored only as its hash.
 *
 * @example
 * ```ts
 * const { token } = await createSession(kv, { kind: "user", user_id, account_id }, svc.now());
 * ```
 */
export async function createSession(
  kv: Deno.Kv,
  spec: SessionSpec,
  now: number,
  ttlMs = SESSION_TTL_MS,
): Promise<{ token: string; session: Session }> {
  const token = randomToken(32);
  const session: Session = {
    kind: spec.kind,
    user_id: spec.user_id ?? null,
    account_id: spec.account_id ?? null,
    csrf: randomToken(24),
    created_ms: now,
    expires_ms: now + ttlMs,
    ...(spec.admin_tag ? { admin_tag: spec.admin_tag } : {}),
  };
  await kv.set(sessionKey(await hashSecret(token)), session, { expireIn: ttlMs });
  return { token, session };
}

/**
 * The live session behind a cookie token, or null (unknown, expired or malformed).
 *
 * @example
 * ```ts
 * const session = await getSession(kv, sessionToken(req), svc.now()); // null when gone
 * ```
 */
export async function getSession(
  kv: Deno.Kv,
  token: string | undefined,
  now: number,
): Promise<Session | null> {
  if (!token || token.length > 100) return null;
  const s = (await kv.get<Session>(sessionKey(await hashSecret(token)))).value;
  // KV expiry is lazy: the session's own deadline decides.
  return s && s.expires_ms > now ? s : null;
}

/**
 * The tag an operator session keeps of the ADMIN_TOKEN it was opened with. Not the token, nor a
 * plain hash of it (an operator-chosen token may be guessable from one): PBKDF2-SHA256, worked out
 * once per token per process.
 */
export function adminTokenTag(adminToken: string): Promise<string> {
  let tag = adminTags.get(adminToken);
  if (!tag) {
    tag = pbkdf2(adminToken);
    adminTags.set(adminToken, tag);
  }
  return tag;
}

const adminTags = new Map<string, Promise<string>>();
const ADMIN_TAG_SALT = new TextEncoder().encode("enterprise-router operator session");
const ADMIN_TAG_ITERATIONS = 100_000;

async function pbkdf2(secret: string): Promise<string> {
  const bits = await pbkdf2Sha256(secret, ADMIN_TAG_SALT, ADMIN_TAG_ITERATIONS);
  return Array.from(bits, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Whether an operator session still stands: it was opened with the ADMIN_TOKEN configured now
 * (compared in constant time). False when no token is configured, or for a session without a tag.
 */
export async function adminSessionValid(
  session: Session,
  adminToken: string | undefined,
): Promise<boolean> {
  if (session.kind !== "admin" || !adminToken || !session.admin_tag) return false;
  return safeEqual(session.admin_tag, await adminTokenTag(adminToken));
}

/**
 * Ends a session.
 *
 * @example
 * ```ts
 * await deleteSession(kv, viewer.token);
 * ```
 */
export async function deleteSession(kv: Deno.Kv, token: string | undefined) {
  if (token) await kv.delete(sessionKey(await hashSecret(token)));
}

/** Moves a session to another account the user belongs to (the caller checked membership). */
export async function switchSessionAccount(
  kv: Deno.Kv,
  token: string,
  accountId: string,
  now: number,
) {
  const key = sessionKey(await hashSecret(token));
  const entry = await kv.get<Session>(key);
  if (!entry.value) return false;
  const ttl = Math.max(1000, entry.value.expires_ms - now);
  const res = await kv.atomic().check(entry).set(key, { ...entry.value, account_id: accountId }, {
    expireIn: ttl,
  }).commit();
  return res.ok;
}

/** Reads a cookie from a Cookie header. */
export function readCookie(header: string | null, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(";")) {
    const i = part.indexOf("=");
    if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return undefined;
}

/**
 * The session token a request to the site at `siteUrl` carries. A secure site (`secureSite`) sets
 * only `__Host-session`, and only that one is read: the unprefixed name can be planted by a
 * sibling subdomain or over plain http. A plain-http site reads either.
 *
 * @example
 * ```ts
 * const token = sessionToken(c.req.raw, svc.config.publicUrl ?? c.req.url);
 * ```
 */
export function sessionToken(req: Request, siteUrl: string = req.url): string | undefined {
  const h = req.headers.get("cookie");
  const token = readCookie(h, SESSION_COOKIE);
  return token !== undefined || secureSite(siteUrl) ? token : readCookie(h, PLAIN_SESSION_COOKIE);
}

const LOOPBACK = new Set(["localhost", "127.0.0.1", "[::1]"]);

/** Whether the site's session cookie is Secure and `__Host-`: https, or loopback. */
function secureSite(url: string): boolean {
  const u = new URL(url);
  return u.protocol === "https:" || LOOPBACK.has(u.hostname);
}

/**
 * The Set-Cookie value for a session token (empty token and maxAge 0 clear it). Secure over
 * https and on loopback (browsers treat loopback as a secure context); plain http elsewhere uses
 * the unprefixed name, because a `__Host-` cookie must be Secure.
 *
 * @example
 * ```ts
 * c.header("set-cookie", sessionCookie(siteUrl, token, SESSION_TTL_MS / 1000));
 * ```
 */
export function sessionCookie(url: string, token: string, maxAgeS: number): string {
  const secure = secureSite(url);
  const name = secure ? SESSION_COOKIE : PLAIN_SESSION_COOKIE;
  return `${name}=${token}; Path=/; HttpOnly; SameSite=Lax; Max-Age=${maxAgeS}` +
    (secure ? "; Secure" : "");
}

/**
 * Whether a state-changing request may act for `session`: it must come from this origin
 * (Sec-Fetch-Site, else Origin, when the browser sends them) and echo the session's CSRF token.
 *
 * @example
 * ```ts
 * const ok = checkCsrf(c.req.raw, session, c.req.header("x-csrf-token"), origins); // else 403
 * ```
 */
export function checkCsrf(
  req: Request,
  session: Session,
  token: string | null | undefined,
  allowedOrigins: string[] = [],
): boolean {
  const site = req.headers.get("sec-fetch-site");
  if (site !== null && site !== "same-origin") return false;
  const origin = req.headers.get("origin");
  if (origin !== null && origin !== new URL(req.url).origin && !allowedOrigins.includes(origin)) {
    return false;
  }
  return typeof token === "string" && token.length > 0 && safeEqual(token, session.csrf);
}

/** Sign-in attempts allowed per client (an IPv4 address, an IPv6 /64) per window. */
export const SIGNIN_LIMIT = 10;
export const SIGNIN_WINDOW_MS = 5 * 60_000;

/**
 * Counts a sign-in attempt of `ip` and says whether it may proceed; when not, how many seconds
 * until the window ends. IPv6 addresses count by their /64 (`signinClient`). The counter expires
 * with its window.
 */
export function countSigninAttempt(
  kv: Deno.Kv,
  ip: string,
  now: number,
): Promise<{ ok: boolean; retryAfterS: number }> {
  const windowMs = now - (now % SIGNIN_WINDOW_MS);
  return countAttempt(
    kv,
    signinAttemptsKey(signinClient(ip), windowMs),
    SIGNIN_LIMIT,
    windowMs + SIGNIN_WINDOW_MS - now,
    SIGNIN_WINDOW_MS * 2,
  );
}

/** Failed sign-ins allowed per email per window, from any number of addresses. */
export const SIGNIN_EMAIL_LIMIT = 20;
export const SIGNIN_EMAIL_WINDOW_MS = 15 * 60_000;

/**
 * Counts a sign-in for `email` (trimmed, lower-cased, kept only as its hash) as failed before its
 * password is checked, so that concurrent attempts cannot slip past the limit; `succeeded` takes
 * it back once the password was right. Not ok, with the seconds until the window ends, when the
 * email has used up its failures: whatever the password, and alike for emails no user has.
 */
export async function countSigninFailure(
  kv: Deno.Kv,
  email: string,
  now: number,
): Promise<{ ok: boolean; retryAfterS: number; succeeded: () => Promise<void> }> {
  const windowMs = now - (now % SIGNIN_EMAIL_WINDOW_MS);
  const key = signinFailuresKey(await hashSecret(`signin:${normalizeEmail(email)}`), windowMs);
  const expireIn = SIGNIN_EMAIL_WINDOW_MS * 2;
  const limit = await countAttempt(
    kv,
    key,
    SIGNIN_EMAIL_LIMIT,
    windowMs + SIGNIN_EMAIL_WINDOW_MS - now,
    expireIn,
  );
  return {
    ...limit,
    succeeded: async () => {
      for (let attempt = 0; attempt < 10; attempt++) {
        const entry = await kv.get<number>(key);
        if (!entry.value) return;
        const res = await kv.atomic().check(entry).set(key, entry.value - 1, { expireIn }).commit();
        if (res.ok) return;
      }
    },
  };
}

/**
 * Counts in the window at `key` (`countInWindow`): ok while within `limit`, with `retryAfterMs`
 * as what a refusal tells the client to wait; contended beyond reason is a refusal too.
 */
async function countAttempt(
  kv: Deno.Kv,
  key: Deno.KvKey,
  limit: number,
  retryAfterMs: number,
  expireIn: number,
): Promise<{ ok: boolean; retryAfterS: number }> {
  const counted = await countInWindow(kv, key, limit, expireIn);
  return { ok: counted === "ok", retryAfterS: Math.ceil(retryAfterMs / 1000) };
}
