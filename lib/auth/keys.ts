import { hashSecret, randomToken } from "../crypto.ts";
import { newId } from "../ids.ts";
import {
  accountKeyIndex,
  accountKeysPrefix,
  apiKeyKey,
  keyHashKey,
  keyIdOfIndex,
  keySpendKey,
} from "../kv/schema.ts";
import { commitRetrying, getAll } from "../kv/util.ts";
import { readWithLeases } from "../billing/views.ts";
import { keySpendView } from "../billing/lease.ts";
import {
  type ApiKey,
  EMPTY_KEY_SPEND,
  type KeyScope,
  type KeySpend,
  type LimitReset,
} from "../billing/types.ts";

export interface NewKey {
  name: string;
  scope: KeyScope;
  credit_limit?: bigint | null;
  limit_reset?: LimitReset | null;
  expires_at?: string | null;
  rate_limit_rpm?: number | null;
  /** Alert thresholds in basis points of the credit limit (default DEFAULT_ALERT_BP). */
  alert_bp?: number[];
}

/**
 * Creates a key (`er-` + 256 random bits) for an account; returns the record and the secret,
 * which is never stored. With `atomic`, the key is added to it (account creation) uncommitted.
 *
 * @example
 * ```ts
 * const { key, secret } = await createKey(kv, accountId, { name: "ci", scope: "inference" }, now);
 * ```
 */
export async function createKey(
  kv: Deno.Kv,
  accountId: string,
  spec: NewKey,
  now: number,
  atomic?: Deno.AtomicOperation,
): Promise<{ key: ApiKey; secret: string }> {
  const secret = "er-" + randomToken(32);
  const key: ApiKey = {
    id: newId("key"),
    account_id: accountId,
    name: spec.name,
    scope: spec.scope,
    prefix: secret.slice(0, 10),
    hash: await hashSecret(secret),
    created_at: new Date(now).toISOString(),
    disabled: false,
    revoked_at: null,
    credit_limit: spec.credit_limit ?? null,
    limit_reset: spec.limit_reset ?? null,
    expires_at: spec.expires_at ?? null,
    rate_limit_rpm: spec.rate_limit_rpm ?? null,
    ...(spec.alert_bp ? { alert_bp: spec.alert_bp } : {}),
  };
  const op = atomic ?? kv.atomic();
  op.check({ key: keyHashKey(key.hash), versionstamp: null })
    .set(apiKeyKey(key.id), key)
    .set(keyHashKey(key.hash), key.id)
    .set(accountKeyIndex(accountId, key.id), true);
  if (!atomic) {
    const res = await commitRetrying(op);
    if (!res.ok) throw new Error("key creation conflicted");
  }
  return { key, secret };
}

/**
 * A key by id, or null.
 *
 * @example
 * ```ts
 * const key = await getKey(kv, "key_01m9…"); // null when there is none
 * ```
 */
export async function getKey(kv: Deno.Kv, id: string): Promise<ApiKey | null> {
  return (await kv.get<ApiKey>(apiKeyKey(id))).value;
}

/**
 * An account's keys (revoked ones included) with their spends as customers see them as of `now`
 * (the account's leases counted in, see `keySpendView`), oldest first.
 *
 * @example
 * ```ts
 * const live = (await listKeysByAccount(kv, accountId, svc.now())).filter(({ key }) => !key.revoked_at);
 * ```
 */
export async function listKeysByAccount(
  kv: Deno.Kv,
  accountId: string,
  now: number,
): Promise<{ key: ApiKey; spend: KeySpend }[]> {
  const ids: string[] = [];
  for await (const e of kv.list({ prefix: accountKeysPrefix(accountId) })) {
    ids.push(keyIdOfIndex(e.key));
  }
  const keys = await getAll<ApiKey>(kv, ids.map((id) => apiKeyKey(id)));
  const { entries: spends, leases } = await readWithLeases<KeySpend>(
    kv,
    accountId,
    ids.map((id) => keySpendKey(accountId, id)),
  );
  return keys.flatMap((k, i) =>
    k.value
      ? [{
        key: k.value,
        spend: keySpendView(
          spends[i].value ?? EMPTY_KEY_SPEND,
          k.value.id,
          k.value.limit_reset,
          leases,
          now,
        ),
      }]
      : []
  );
}

/**
 * A key's spend as customers see it as of `now`: the account's leases counted in.
 *
 * @example
 * ```ts
 * const s = await getKeySpend(kv, key, svc.now()); // s.spend, s.reserved, s.usage_today…
 * ```
 */
export async function getKeySpend(kv: Deno.Kv, key: ApiKey, now: number): Promise<KeySpend> {
  const { entries: [s], leases } = await readWithLeases<KeySpend>(kv, key.account_id, [
    keySpendKey(key.account_id, key.id),
  ]);
  return keySpendView(s.value ?? EMPTY_KEY_SPEND, key.id, key.limit_reset, leases, now);
}

/** Why a presented key is refused, or the key. */
export type KeyCheck =
  | { ok: true; key: ApiKey }
  | { ok: false; code: "invalid_api_key" | "key_disabled" };

/**
 * Whether a key may call now: live, not expired, not disabled; else why not.
 *
 * @example
 * ```ts
 * const check = checkKey(await svc.keys.resolve(secret), svc.now());
 * if (!check.ok) throw new ApiError(401, check.code, "…");
 * ```
 */
export function checkKey(key: ApiKey | null, now: number): KeyCheck {
  if (!key || key.revoked_at) return { ok: false, code: "invalid_api_key" };
  if (key.expires_at !== null && Date.parse(key.expires_at) <= now) {
    return { ok: false, code: "invalid_api_key" };
  }
  if (key.disabled) return { ok: false, code: "key_disabled" };
  return { ok: true, key };
}

/**
 * How long a looked-up key is trusted: a key changed by another process (revoked, disabled) is
 * seen within this long. The cost is one lookup per key and period, whatever the request rate.
 */
export const KEY_CACHE_MS = 1000;

/**
 * Finds the key behind a presented secret. Lookups are cached for at most `KEY_CACHE_MS` (the
 * gateway's hot path); the cache is dropped on every change made in this process, and the
 * reservation atomic re-reads the key, so a revoked or disabled key never gets a request billed.
 */
export class KeyResolver {
  #kv: Deno.Kv;
  /** Lookups by secret hash; concurrent requests with one key share a single lookup. */
  #cache = new Map<string, { key: Promise<ApiKey | null>; at: number }>();
  #ttlMs: number;

  #now: () => number;

  constructor(kv: Deno.Kv, now: () => number, ttlMs = KEY_CACHE_MS) {
    this.#kv = kv;
    this.#now = now;
    this.#ttlMs = ttlMs;
  }

  /**
   * The key of `secret`, or null. `fresh` reads KV whatever is cached (management calls, which
   * must not outlive a revocation made elsewhere by a moment), and caches what it read.
   */
  async resolve(secret: string, fresh = false): Promise<ApiKey | null> {
    if (!secret.startsWith("er-") || secret.length > 200) return null;
    const hash = await hashSecret(secret);
    const now = this.#now();
    const hit = this.#cache.get(hash);
    if (!fresh && hit && now - hit.at < this.#ttlMs) return hit.key;
    const key = this.#lookup(hash);
    if (this.#cache.size > 10_000) this.#cache.clear();
    this.#cache.set(hash, { key, at: now });
    // A failed read is not remembered: the next request tries again.
    key.catch(() => this.#cache.delete(hash));
    return key;
  }

  async #lookup(hash: string): Promise<ApiKey | null> {
    const id = (await this.#kv.get<string>(keyHashKey(hash))).value;
    return id ? await getKey(this.#kv, id) : null;
  }

  /** Forgets a key (after it changed). */
  forget(hash: string) {
    this.#cache.delete(hash);
  }
}
