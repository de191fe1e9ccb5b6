import type { Context } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { idemKey } from "../kv/schema.ts";
import { hashSecret } from "../crypto.ts";
import type { AppEnv } from "../services.ts";
import { ApiError } from "../errors.ts";

/** The stored first answer to an `Idempotency-Key`. */
export interface IdempotentReply {
  hash: string;
  status: number;
  body: unknown;
}

export const IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000;

/** A JSON value with every object's keys in order, so that one set of parameters has one text. */
function sortedKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortedKeys);
  if (v === null || typeof v !== "object") return v;
  const o = v as Record<string, unknown>;
  return Object.fromEntries(Object.keys(o).sort().map((k) => [k, sortedKeys(o[k])]));
}

/**
 * A body's parameters as one text: a JSON body parsed and written back with sorted keys (as Stripe
 * compares a retry's parameters, not its bytes), anything else as it came.
 */
function canonicalBody(raw: string): string {
  try {
    return JSON.stringify(sortedKeys(JSON.parse(raw)));
  } catch {
    return raw;
  }
}

/**
 * The request's idempotency record key and body hash, or null without the header.
 *
 * @example
 * ```ts
 * const idem = await idempotency(c, "admin:accounts", raw); // null without the header
 * ```
 */
export async function idempotency(c: Context<AppEnv>, scope: string, rawBody: string) {
  const header = c.req.header("idempotency-key");
  if (header === undefined) return null;
  if (header.length === 0 || header.length > 255) {
    throw new ApiError(400, "invalid_request", "Idempotency-Key must be 1 to 255 characters");
  }
  return {
    key: idemKey(scope, header),
    hash: await hashSecret(canonicalBody(rawBody)),
    // Replies stored before bodies were compared by their parameters hold the bytes' hash.
    rawHash: await hashSecret(rawBody),
  };
}

/**
 * Answers from a stored reply: the same body replays it, another body is 409. Returns null when
 * nothing is stored.
 *
 * @example
 * ```ts
 * if (stored) return replay(c, stored, idem); // the first answer, or 409 for another body
 * ```
 */
export function replay(
  c: Context<AppEnv>,
  stored: unknown,
  idem: { hash: string; rawHash: string },
): Response {
  const r = stored as IdempotentReply;
  if (r.hash !== idem.hash && r.hash !== idem.rawHash) {
    throw new ApiError(
      409,
      "idempotency_conflict",
      "This Idempotency-Key was already used with a different request body",
    );
  }
  c.header("idempotent-replayed", "true");
  return c.json(r.body, r.status as ContentfulStatusCode);
}

/**
 * Looks for a stored reply first (the common replay path, without touching the writer).
 *
 * @example
 * ```ts
 * const stored = idem && await storedReply(svc.kv, idem.key);
 * if (stored) return replay(c, stored, idem);
 * ```
 */
export async function storedReply(kv: Deno.Kv, key: Deno.KvKey): Promise<IdempotentReply | null> {
  return (await kv.get<IdempotentReply>(key)).value;
}
