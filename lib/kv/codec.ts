/**
 * KV keys and values as JSON, type-preserving: what JSON has no type for becomes a tagged object
 * `{"$t": tag, "v": …}` (bigint, Deno.KvU64, Uint8Array, Date, Map, Set, undefined, and the numbers
 * JSON cannot write: NaN, ±Infinity, −0), and a stored object that itself has a `$t` field is
 * wrapped as `{"$t": "object", "v": …}`. Decoding gives back values equal in type and content.
 */

const TAG = "$t";

/** A value KV stores that this encoding does not know (a RegExp, an Error, another typed array). */
export class CodecError extends Error {
  override name = "CodecError";
}

const bytesToBase64 = (b: Uint8Array) => {
  let s = "";
  for (let i = 0; i < b.length; i += 0x8000) {
    s += String.fromCharCode(...b.subarray(i, i + 0x8000));
  }
  return btoa(s);
};

const base64ToBytes = (s: string) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));

const tagged = (t: string, v: unknown) => ({ [TAG]: t, v });

// Fields defined, not assigned: a field named "__proto__" stays a field.
const mapFields = (o: object, f: (x: unknown) => unknown): Record<string, unknown> =>
  Object.fromEntries(Object.entries(o).map(([k, x]) => [k, f(x)]));

/** A value as JSON-compatible data. */
export function encodeValue(v: unknown): unknown {
  switch (typeof v) {
    case "string":
    case "boolean":
      return v;
    case "number":
      if (Object.is(v, -0)) return tagged("number", "-0");
      return Number.isFinite(v) ? v : tagged("number", String(v));
    case "bigint":
      return tagged("bigint", v.toString());
    case "undefined":
      return tagged("undefined", null);
    case "object": {
      if (v === null) return null;
      if (Array.isArray(v)) return Array.from(v, encodeValue);
      if (v instanceof Deno.KvU64) return tagged("u64", v.value.toString());
      if (v instanceof Uint8Array && v.constructor === Uint8Array) {
        return tagged("bytes", bytesToBase64(v));
      }
      if (v instanceof Date) return tagged("date", String(v.getTime()));
      if (v instanceof Map) {
        return tagged("map", Array.from(v, ([k, x]) => [encodeValue(k), encodeValue(x)]));
      }
      if (v instanceof Set) return tagged("set", Array.from(v, encodeValue));
      const proto = Object.getPrototypeOf(v);
      if (proto !== Object.prototype && proto !== null) {
        throw new CodecError(`cannot encode a ${proto?.constructor?.name ?? "value"}`);
      }
      const out = mapFields(v, encodeValue);
      return TAG in out ? tagged("object", out) : out;
    }
    default:
      throw new CodecError(`cannot encode a ${typeof v}`);
  }
}

/** Data made by `encodeValue`, as the value it encodes; throws a CodecError on anything else. */
export function decodeValue(d: unknown): unknown {
  if (d === null || typeof d === "string" || typeof d === "boolean" || typeof d === "number") {
    return d;
  }
  if (Array.isArray(d)) return d.map(decodeValue);
  if (typeof d !== "object") throw new CodecError(`not encoded data: ${typeof d}`);
  const o = d as Record<string, unknown>;
  if (!(TAG in o)) return mapFields(o, decodeValue);
  const v = o.v;
  const text = () => {
    if (typeof v !== "string") throw new CodecError(`"${o[TAG]}" needs a string`);
    return v;
  };
  const list = () => {
    if (!Array.isArray(v)) throw new CodecError(`"${o[TAG]}" needs an array`);
    return v;
  };
  try {
    switch (o[TAG]) {
      case "number": {
        const n = Number(text());
        if (!Number.isNaN(n) || v === "NaN") return n;
        break;
      }
      case "bigint":
        if (/^-?\d+$/.test(text())) return BigInt(v as string);
        break;
      case "u64":
        if (/^\d+$/.test(text())) return new Deno.KvU64(BigInt(v as string));
        break;
      case "bytes":
        return base64ToBytes(text());
      case "date":
        return new Date(Number(text()));
      case "undefined":
        return undefined;
      case "map":
        return new Map(
          list().map((pair) => {
            if (!Array.isArray(pair) || pair.length !== 2) throw new CodecError("a map entry");
            return [decodeValue(pair[0]), decodeValue(pair[1])];
          }),
        );
      case "set":
        return new Set(list().map(decodeValue));
      case "object":
        if (v !== null && typeof v === "object" && !Array.isArray(v)) {
          return mapFields(v, decodeValue);
        }
        break;
    }
  } catch (e) {
    if (e instanceof CodecError) throw e;
    throw new CodecError(`bad "${o[TAG]}": ${(e as Error).message}`);
  }
  throw new CodecError(`bad "${String(o[TAG])}" value`);
}

/** A KV key as JSON-compatible data. */
export const encodeKey = (key: Deno.KvKey): unknown[] => key.map(encodeValue);

/** Data made by `encodeKey`, as the key; throws a CodecError if a part is not a key part. */
export function decodeKey(d: unknown): Deno.KvKey {
  if (!Array.isArray(d)) throw new CodecError("a key must be an array");
  return d.map((p) => {
    const part = decodeValue(p);
    if (
      typeof part === "string" || typeof part === "number" || typeof part === "bigint" ||
      typeof part === "boolean" || part instanceof Uint8Array
    ) return part;
    throw new CodecError("a key part must be a string, number, bigint, boolean or bytes");
  });
}

/**
 * An upper bound of a value's size as KV serializes it (V8's format; 8 bytes for a Deno.KvU64), for
 * filling atomics up to KV's total-size limit.
 */
export function serializedBound(v: unknown): number {
  switch (typeof v) {
    case "string":
      return 10 + 2 * v.length;
    case "bigint":
      return 10 + Math.ceil(v.toString(16).length / 2) + 8;
    case "object": {
      if (v === null) return 1;
      if (v instanceof Deno.KvU64) return 8;
      if (v instanceof Uint8Array) return 30 + v.byteLength;
      if (v instanceof Date) return 9;
      let n = 10;
      if (Array.isArray(v) || v instanceof Set) { for (const x of v) n += serializedBound(x); }
      else if (v instanceof Map) {
        for (const [k, x] of v) n += serializedBound(k) + serializedBound(x);
      } else {
        for (const [k, x] of Object.entries(v)) n += serializedBound(k) + serializedBound(x);
      }
      return n;
    }
    default:
      return 9;
  }
}
