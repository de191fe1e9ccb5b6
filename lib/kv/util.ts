/** Small helpers over Deno KV's limits. */

import { InvalidInput } from "../errors.ts";

/**
 * `getMany` takes at most 10 keys: reads any number, strongly, in parallel chunks.
 *
 * @example
 * ```ts
 * const [a, b] = await getAll<Account>(kv, [accountKey(x), accountKey(y)]);
 * ```
 */
export async function getAll<T>(
  kv: Deno.Kv,
  keys: readonly Deno.KvKey[],
): Promise<Deno.KvEntryMaybe<T>[]> {
  const chunks: Promise<Deno.KvEntryMaybe<T>[]>[] = [];
  for (let i = 0; i < keys.length; i += 10) {
    chunks.push(kv.getMany<T[]>(keys.slice(i, i + 10) as Deno.KvKey[]));
  }
  return (await Promise.all(chunks)).flat();
}

const withBigints = (_k: string, v: unknown) => typeof v === "bigint" ? `${v}n` : v;

/**
 * A stable string for a KV key, for use as a Map key.
 *
 * @example
 * ```ts
 * cache.set(keyString(balanceKey(accountId)), entry);
 * ```
 */
export function keyString(key: Deno.KvKey): string {
  // The same string either way; a replacer function takes JSON.stringify off its fast path, and
  // the actor's cache looks keys up several times per request.
  for (const part of key) if (typeof part === "bigint") return JSON.stringify(key, withBigints);
  return JSON.stringify(key);
}

// NUL is escaped in keys, so it leaves the plain case: the range must start at \x01.
// deno-lint-ignore no-control-regex
const NOT_PLAIN_ASCII = /[^\x01-\x7f]/;

/**
 * An upper bound of a key's encoded size: each part's UTF-8 bytes (a NUL byte is escaped as two)
 * plus its type tag and terminator; numbers and bigints are counted generously.
 *
 * @example
 * ```ts
 * const fits = bytes + keyBytes(key) <= KV_LIMITS.keyBytes; // else start another atomic
 * ```
 */
export function keyBytes(key: Deno.KvKey): number {
  let n = 0;
  for (const part of key) {
    if (typeof part === "string") {
      n += 2;
      // Ids and names are ASCII without NUL: one byte per unit, tested natively.
      if (!NOT_PLAIN_ASCII.test(part)) {
        n += part.length;
        continue;
      }
      // Counting UTF-16 units is cheaper than encoding: at most 3 UTF-8 bytes each.
      for (let i = 0; i < part.length; i++) {
        const c = part.charCodeAt(i);
        n += c === 0 ? 2 : c < 0x80 ? 1 : 3;
      }
    } else if (part instanceof Uint8Array) {
      n += part.length + 2;
      for (const b of part) if (b === 0) n++;
    } else n += 24;
  }
  return n;
}

/**
 * `s` cut to at most `max` UTF-16 units (never splitting a surrogate pair): free text from a request
 * (a model name, a user agent) kept short enough for KV's value and key limits.
 *
 * @example
 * ```ts
 * clip(userAgent, MAX_USER_AGENT_CHARS);
 * ```
 */
export function clip(s: string, max: number): string {
  if (s.length <= max) return s;
  const cut = s.charCodeAt(max - 1);
  return s.slice(0, cut >= 0xd800 && cut <= 0xdbff ? max - 1 : max);
}

/**
 * A generous estimate of a plain value's serialized size.
 *
 * @example
 * ```ts
 * approxBytes({ model: "gpt-4o" }); // 57: at least what KV will store
 * ```
 */
export function approxBytes(v: unknown): number {
  switch (typeof v) {
    case "string":
      return 8 + v.length * 3;
    case "object": {
      if (v === null) return 2;
      let n = 8;
      if (Array.isArray(v)) {
        for (const x of v) n += approxBytes(x);
        return n;
      }
      // for…in over a plain value's own keys: Object.entries would allocate a pair per field.
      const o = v as Record<string, unknown>;
      for (const k in o) n += 8 + k.length * 3 + approxBytes(o[k]);
      return n;
    }
    default:
      return 24;
  }
}

/**
 * SQLite's busy error from a KV file another process is writing (local KV only): retry it.
 *
 * @example
 * ```ts
 * try { await atomic.commit(); } catch (e) { if (!isLocked(e)) throw e; }
 * ```
 */
export const isLocked = (e: unknown) =>
  e instanceof Error && /database (table )?is locked/.test(e.message);

/**
 * Waits `ms`.
 *
 * @example
 * ```ts
 * await sleep(25);
 * ```
 */
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Waits `ms` (none when 0), or until `signal` aborts; true when it did not abort.
 *
 * @example
 * ```ts
 * if (!await pause(250, signal)) return; // aborted
 * ```
 */
export const pause = (ms: number, signal: AbortSignal) =>
  new Promise<boolean>((resolve) => {
    if (signal.aborted || ms <= 0) return resolve(!signal.aborted);
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve(!signal.aborted);
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done);
  });

/**
 * Commits an atomic, retrying while another process holds the KV file's lock. A check failure is
 * returned as usual (`ok: false`); any other error is thrown.
 *
 * @example
 * ```ts
 * const res = await commitRetrying(kv.atomic().check(entry).set(entry.key, next));
 * // res.ok false: another writer came first; read again and retry
 * ```
 */
export async function commitRetrying(
  atomic: Deno.AtomicOperation,
): Promise<Deno.KvCommitResult | Deno.KvCommitError> {
  for (let attempt = 0;; attempt++) {
    try {
      return await atomic.commit();
    } catch (e) {
      if (!isLocked(e) || attempt >= 50) throw e;
      await sleep(Math.min(100, 2 + attempt * 5) * Math.random());
    }
  }
}

/**
 * Counts one more in a fixed window's counter at `key` (check-and-set, so processes share it;
 * expiring after `expireIn` ms), with `also`'s writes in the same atomic while the count is within
 * `limit`: "ok" then, "over" past it (counted up to `limit + 1`, no further), "contended" when
 * `attempts` commits all lost to other counts (a caller refuses rather than let one through
 * uncounted).
 *
 * @example
 * ```ts
 * if (await countInWindow(kv, ["tries", ip, minute], 10, 120_000) !== "ok") refuse();
 * ```
 */
export async function countInWindow(
  kv: Deno.Kv,
  key: Deno.KvKey,
  limit: number,
  expireIn: number,
  opts: { also?: (atomic: Deno.AtomicOperation) => void; attempts?: number } = {},
): Promise<"ok" | "over" | "contended"> {
  for (let attempt = 0; attempt < (opts.attempts ?? 10); attempt++) {
    const entry = await kv.get<number>(key);
    const n = (entry.value ?? 0) + 1;
    // Past the limit there is nothing more to count.
    if (n > limit + 1) return "over";
    const atomic = kv.atomic().check(entry).set(key, n, { expireIn });
    if (n <= limit) opts.also?.(atomic);
    if ((await commitRetrying(atomic)).ok) return n <= limit ? "ok" : "over";
  }
  return "contended";
}

/** The latest time a JS Date holds (epoch ms). */
const MAX_DATE_MS = 8.64e15;

/**
 * The paging cursor of a row whose key ends in (time ms, id), as ledger and audit rows' keys do:
 * those two parts as base64url JSON. The next page lists below that key. Not Deno KV's own cursor
 * (the key's encoding, which KV checks only once the listing runs), so that `rowCursorAt` can
 * check every part before it reaches KV.
 */
export function rowCursor(key: Deno.KvKey): string {
  return btoa(JSON.stringify(key.slice(-2))).replaceAll("+", "-").replaceAll("/", "_")
    .replace(/=+$/, "");
}

/**
 * The (time ms, id) a `rowCursor` names, or null for text it cannot have made: the time must be
 * a JS date's, the id short printable ASCII, so that the key made of them is one KV takes and
 * the range below it is a range.
 */
export function rowCursorAt(cursor: string): { ms: number; id: string } | null {
  try {
    const v = JSON.parse(atob(cursor.replaceAll("-", "+").replaceAll("_", "/")));
    if (!Array.isArray(v) || v.length !== 2) return null;
    const [ms, id] = v;
    if (!Number.isSafeInteger(ms) || ms < 0 || ms > MAX_DATE_MS) return null;
    return typeof id === "string" && /^[!-~]{1,64}$/.test(id) ? { ms, id } : null;
  } catch {
    return null;
  }
}

/**
 * One page of a KV listing: up to `limit` entries that `pick` keeps (it returns null to skip), and
 * the cursor after the last one, or null when no kept entry follows.
 *
 * @example
 * ```ts
 * const { data, next_cursor } = await page(kv.list({ prefix }), 100, (v) => v);
 * ```
 */
export async function page<T, R>(
  iter: Deno.KvListIterator<T>,
  limit: number,
  pick: (value: T, key: Deno.KvKey) => R | null,
): Promise<{ data: R[]; next_cursor: string | null }> {
  const data: R[] = [];
  let cursor = "";
  for await (const e of iter) {
    const r = pick(e.value, e.key);
    if (r === null) continue;
    if (data.length === limit) return { data, next_cursor: cursor };
    data.push(r);
    cursor = iter.cursor;
  }
  return { data, next_cursor: null };
}

/**
 * One page (`page`) of a listing, newest first, from a cursor a client sent back: one Deno KV
 * cannot decode is refused as a bad request (KV says so only once the listing is read).
 *
 * @example
 * ```ts
 * await pageNewestFirst(kv, { prefix }, { limit: 100, cursor }, deliveryJson);
 * ```
 */
export async function pageNewestFirst<T, R>(
  kv: Deno.Kv,
  selector: Deno.KvListSelector,
  opts: { limit: number; cursor?: string },
  pick: (value: T, key: Deno.KvKey) => R | null,
): Promise<{ data: R[]; next_cursor: string | null }> {
  const iter = kv.list<T>(selector, { reverse: true, cursor: opts.cursor });
  try {
    return await page(iter, opts.limit, pick);
  } catch (e) {
    if (opts.cursor && e instanceof TypeError && /invalid cursor/i.test(e.message)) {
      throw new InvalidInput("Invalid 'cursor': not a cursor this endpoint returned");
    }
    throw e;
  }
}
