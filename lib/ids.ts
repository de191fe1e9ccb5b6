const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz";
let lastMs = 0;
let seq = 0;

/**
 * A time-ordered id: 10 characters of milliseconds, 4 of a per-millisecond sequence, 10 random.
 * Ids made later in this process sort after earlier ones.
 */
export function newId(prefix: string, now = Date.now()): string {
  if (now <= lastMs) {
    seq++;
    now = lastMs;
  } else {
    lastMs = now;
    seq = 0;
  }
  let t = "";
  for (let v = now, i = 0; i < 10; i++, v = Math.floor(v / 32)) t = ALPHABET[v % 32] + t;
  let s = "";
  for (let v = seq, i = 0; i < 4; i++, v = Math.floor(v / 32)) s = ALPHABET[v % 32] + s;
  const r = crypto.getRandomValues(new Uint8Array(10));
  let rnd = "";
  for (const b of r) rnd += ALPHABET[b & 31];
  return `${prefix}_${t}${s}${rnd}`;
}

/** The id of the first instant of `ms`: every id made at or after `ms` sorts at or after it. */
export function idFloor(prefix: string, ms: number): string {
  let t = "";
  for (let v = ms, i = 0; i < 10; i++, v = Math.floor(v / 32)) t = ALPHABET[v % 32] + t;
  return `${prefix}_${t}`;
}
