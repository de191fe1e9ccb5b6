const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz";
let lastMs = 0;
let seq = 0;
/** The millisecond part of the last id, kept: ids of one millisecond share it. */
let timeMs = -1;
let timePart = "";
const pool = new Uint8Array(4096);
let poolAt = pool.length;

/**
 * A time-ordered id: 10 characters of milliseconds, 4 of a per-millisecond sequence, 10 random.
 * Ids made later in this process sort after earlier ones.
 *
 * @example
 * ```ts
 * newId("key"); // "key_01m9…": 24 lowercase Crockford base32 characters
 * ```
 */
export function newId(prefix: string, now = Date.now()): string {
  if (now <= lastMs) {
    seq++;
    now = lastMs;
  } else {
    lastMs = now;
    seq = 0;
  }
  if (now !== timeMs) {
    timeMs = now;
    timePart = "";
    for (let v = now, i = 0; i < 10; i++, v = Math.floor(v / 32)) {
      timePart = ALPHABET[v % 32] + timePart;
    }
  }
  let s = "";
  for (let v = seq, i = 0; i < 4; i++, v = Math.floor(v / 32)) s = ALPHABET[v % 32] + s;
  // Random bytes are drawn a pool at a time: one getRandomValues call per id cost more than the rest.
  if (poolAt + 10 > pool.length) {
    crypto.getRandomValues(pool);
    poolAt = 0;
  }
  let rnd = "";
  for (const end = poolAt + 10; poolAt < end; poolAt++) rnd += ALPHABET[pool[poolAt] & 31];
  return `${prefix}_${timePart}${s}${rnd}`;
}

/** The id of the first instant of `ms`: every id made at or after `ms` sorts at or after it. */
export function idFloor(prefix: string, ms: number): string {
  let t = "";
  for (let v = ms, i = 0; i < 10; i++, v = Math.floor(v / 32)) t = ALPHABET[v % 32] + t;
  return `${prefix}_${t}`;
}

/** When an id `newId` made was made (epoch ms), or null for text of another shape. */
export function idTime(id: string): number | null {
  const at = id.indexOf("_") + 1;
  if (at === 0 || id.length < at + 10) return null;
  let ms = 0;
  for (let i = at; i < at + 10; i++) {
    const d = ALPHABET.indexOf(id[i]);
    if (d < 0) return null;
    ms = ms * 32 + d;
  }
  return ms;
}

/** The part of an id after its prefix and underscore, as `newId` writes it. */
const ID_BODY = "[0-9a-hjkmnp-tv-z]{24}";
const shapes = new Map<string, RegExp>();

/**
 * Whether `v` has the shape of an id `newId(prefix)` makes: the prefix, `_` and 24 characters
 * of the id alphabet. Checked before an id from a request reaches a KV key: KV refuses keys over
 * 2 KiB, and an id of another shape names nothing.
 *
 * @example
 * ```ts
 * isId("key", newId("key")); // true
 * isId("key", "key_nope"); // false
 * ```
 */
export function isId(prefix: string, v: string): boolean {
  let re = shapes.get(prefix);
  if (!re) shapes.set(prefix, re = new RegExp(`^${prefix}_${ID_BODY}$`));
  return re.test(v);
}

/** A request id (`req_…`), or the id of one of its failed attempts (`req_….N`). */
export function isRequestId(v: string): boolean {
  const dot = v.indexOf(".");
  return dot === -1 ? isId("req", v) : /^\.[1-9]\d{0,3}$/.test(v.slice(dot)) &&
    isId("req", v.slice(0, dot));
}
