/**
 * Token counts as OpenAI's tokenizers make them (tiktoken's byte-pair encodings `o200k_base` and
 * `cl100k_base`), for billing a reply whose usage never came. The ranks ship with `js-tiktoken`;
 * they are loaded on first use, into a compact hash table rather than js-tiktoken's string-keyed
 * map, and merged with a heap, so a long piece of text (a run of CJK characters is one piece)
 * costs O(n log n) where js-tiktoken's merge is quadratic.
 */

/** The encodings the router can count with. */
export type EncodingName = "o200k_base" | "cl100k_base";

/** Counts the tokens of a text. */
export type TokenCounter = (text: string) => number;

interface Ranks {
  pat_str: string;
  bpe_ranks: string;
}

const RANKS: Record<EncodingName, () => Promise<{ default: Ranks }>> = {
  o200k_base: () => import("js-tiktoken/ranks/o200k_base"),
  cl100k_base: () => import("js-tiktoken/ranks/cl100k_base"),
};

const utf8 = new TextEncoder();
// deno-lint-ignore no-control-regex
const NON_ASCII = /[^\x00-\x7f]/;

/** The UTF-8 length of a text: an upper bound on the tokens of any byte-level tokenizer. */
export function utf8Bytes(text: string): number {
  if (!NON_ASCII.test(text)) return text.length;
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c < 0xdc00 && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d < 0xe000) {
        n += 4;
        i++;
      } else n += 3;
    } else n += 3;
  }
  return n;
}

/** A byte-pair encoding's ranks: token bytes → rank, in an open-addressing table. */
class BytePairEncoding {
  readonly #pattern: RegExp;
  /** Every token's bytes, one after another; token i spans `#starts[i]`..`#starts[i + 1]`. */
  readonly #bytes: Uint8Array;
  readonly #starts: Int32Array;
  readonly #ranks: Int32Array;
  /** Token index + 1 per slot, 0 for an empty slot. */
  readonly #table: Int32Array;
  readonly #mask: number;
  #buf = new Uint8Array(1024);

  constructor(ranks: Ranks) {
    this.#pattern = new RegExp(ranks.pat_str, "gu");
    const tokens: string[] = [];
    const rankOf: number[] = [];
    for (const line of ranks.bpe_ranks.split("\n")) {
      if (!line) continue;
      const parts = line.split(" ");
      const offset = Number.parseInt(parts[1], 10);
      for (let i = 2; i < parts.length; i++) {
        tokens.push(atob(parts[i]));
        rankOf.push(offset + i - 2);
      }
    }
    let total = 0;
    for (const t of tokens) total += t.length;
    this.#bytes = new Uint8Array(total);
    this.#starts = new Int32Array(tokens.length + 1);
    this.#ranks = Int32Array.from(rankOf);
    let size = 1;
    while (size < tokens.length * 2) size <<= 1;
    this.#table = new Int32Array(size);
    this.#mask = size - 1;
    let at = 0;
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i];
      this.#starts[i] = at;
      for (let k = 0; k < t.length; k++) this.#bytes[at + k] = t.charCodeAt(k);
      let slot = hash(this.#bytes, at, at + t.length) & this.#mask;
      while (this.#table[slot] !== 0) slot = (slot + 1) & this.#mask;
      this.#table[slot] = i + 1;
      at += t.length;
    }
    this.#starts[tokens.length] = at;
  }

  /** The rank of the bytes `buf[start..end)` as one token, or -1. */
  #rank(buf: Uint8Array, start: number, end: number): number {
    const len = end - start;
    let slot = hash(buf, start, end) & this.#mask;
    for (;;) {
      const entry = this.#table[slot];
      if (entry === 0) return -1;
      const t = entry - 1;
      const from = this.#starts[t];
      if (this.#starts[t + 1] - from === len) {
        let k = 0;
        while (k < len && this.#bytes[from + k] === buf[start + k]) k++;
        if (k === len) return this.#ranks[t];
      }
      slot = (slot + 1) & this.#mask;
    }
  }

  /** The number of tokens of `text`. */
  count(text: string): number {
    let n = 0;
    this.#pattern.lastIndex = 0;
    for (const match of text.matchAll(this.#pattern)) n += this.#countPiece(match[0]);
    return n;
  }

  #countPiece(piece: string): number {
    if (this.#buf.length < piece.length * 3) this.#buf = new Uint8Array(piece.length * 3);
    const buf = this.#buf;
    const len = utf8.encodeInto(piece, buf).written;
    if (len <= 1 || this.#rank(buf, 0, len) >= 0) return 1;
    return this.#merge(buf, len);
  }

  /**
   * tiktoken's merge: the adjacent pair of lowest rank (the leftmost of equals) is merged until
   * no pair is a token; the parts left are the tokens. Pairs wait in a heap ordered by (rank,
   * start), and a pair whose parts changed since it was pushed is skipped when it comes up.
   */
  #merge(buf: Uint8Array, len: number): number {
    // partEnd[i]: the end of the part starting at byte i, or -1 where no part starts.
    const partEnd = new Int32Array(len);
    const prev = new Int32Array(len);
    for (let i = 0; i < len; i++) {
      partEnd[i] = i + 1;
      prev[i] = i - 1;
    }
    const heap = new PairHeap();
    for (let i = 0; i + 1 < len; i++) {
      const r = this.#rank(buf, i, i + 2);
      if (r >= 0) heap.push(r, i, i + 1, i + 2);
    }
    let parts = len;
    while (heap.size > 0) {
      const [left, mid, end] = heap.pop();
      if (partEnd[left] !== mid || partEnd[mid] !== end) continue;
      partEnd[left] = end;
      partEnd[mid] = -1;
      parts--;
      if (end < len) prev[end] = left;
      if (left > 0) {
        const p = prev[left];
        const r = this.#rank(buf, p, end);
        if (r >= 0) heap.push(r, p, left, end);
      }
      if (end < len) {
        const next = partEnd[end];
        const r = this.#rank(buf, left, next);
        if (r >= 0) heap.push(r, left, end, next);
      }
    }
    return parts;
  }
}

/** FNV-1a over `buf[start..end)`. */
function hash(buf: Uint8Array, start: number, end: number): number {
  let h = 0x811c9dc5;
  for (let i = start; i < end; i++) h = Math.imul(h ^ buf[i], 0x01000193);
  return h >>> 0;
}

/** A binary min-heap of candidate merges (rank, left, mid, end), ordered by rank then left. */
class PairHeap {
  #rank: number[] = [];
  #left: number[] = [];
  #mid: number[] = [];
  #end: number[] = [];

  get size(): number {
    return this.#rank.length;
  }

  #less(a: number, b: number): boolean {
    return this.#rank[a] < this.#rank[b] ||
      (this.#rank[a] === this.#rank[b] && this.#left[a] < this.#left[b]);
  }

  #swap(a: number, b: number) {
    for (const arr of [this.#rank, this.#left, this.#mid, this.#end]) {
      const t = arr[a];
      arr[a] = arr[b];
      arr[b] = t;
    }
  }

  push(rank: number, left: number, mid: number, end: number) {
    let i = this.#rank.length;
    this.#rank.push(rank);
    this.#left.push(left);
    this.#mid.push(mid);
    this.#end.push(end);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.#less(i, parent)) break;
      this.#swap(i, parent);
      i = parent;
    }
  }

  pop(): [number, number, number] {
    const top: [number, number, number] = [this.#left[0], this.#mid[0], this.#end[0]];
    const last = this.#rank.length - 1;
    this.#swap(0, last);
    this.#rank.pop();
    this.#left.pop();
    this.#mid.pop();
    this.#end.pop();
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let least = i;
      if (l < last && this.#less(l, least)) least = l;
      if (r < last && this.#less(r, least)) least = r;
      if (least === i) break;
      this.#swap(i, least);
      i = least;
    }
    return top;
  }
}

const loaded = new Map<EncodingName, Promise<BytePairEncoding>>();

/**
 * The token counter of an encoding, its ranks loaded on first use (about 2 MB of module, a few
 * tens of milliseconds once per process).
 *
 * @example
 * ```ts
 * const count = await encodingCounter("o200k_base");
 * count("Hello, world"); // 4
 * ```
 */
export async function encodingCounter(name: EncodingName): Promise<TokenCounter> {
  let encoding = loaded.get(name);
  if (!encoding) {
    encoding = RANKS[name]().then((m) => new BytePairEncoding(m.default));
    loaded.set(name, encoding);
    // A failed load is tried again by the next caller.
    encoding.catch(() => loaded.delete(name));
  }
  const e = await encoding;
  return (text) => e.count(text);
}
