import assert from "node:assert/strict";
import { serialize } from "node:v8";
import {
  CodecError,
  decodeKey,
  decodeValue,
  encodeKey,
  encodeValue,
  serializedBound,
} from "../../../lib/kv/codec.ts";

const viaJson = (v: unknown) => decodeValue(JSON.parse(JSON.stringify(encodeValue(v))));

const EVERY_TYPE = {
  text: "héllo \u0000 \u{1F600}",
  int: 42,
  float: 0.1,
  nan: NaN,
  inf: -Infinity,
  negZero: -0,
  big: -(2n ** 80n),
  yes: true,
  none: null,
  missing: undefined,
  bytes: new Uint8Array([0, 1, 254, 255]),
  when: new Date(Date.UTC(2026, 11, 7, 12)),
  invalid: new Date(NaN),
  map: new Map<unknown, unknown>([["a", 1n], [2, new Set([3, "x"])]]),
  list: [1, "two", [3n, { deep: new Uint8Array(0) }]],
  $t: "a field named like the tag",
  nested: { $t: "bigint", v: "not a bigint" },
};

Deno.test("codec: every value KV stores comes back from JSON equal, in type and content", () => {
  assert.deepStrictEqual(viaJson(EVERY_TYPE), EVERY_TYPE);
  const u64 = viaJson(new Deno.KvU64(2n ** 64n - 1n));
  assert.ok(u64 instanceof Deno.KvU64);
  assert.equal(u64.value, 2n ** 64n - 1n);
  assert.ok(Object.is((viaJson([-0]) as number[])[0], -0));
});

Deno.test("codec: a field named __proto__ stays a field", () => {
  const v = JSON.parse('{"__proto__": {"polluted": true}, "a": 1}');
  const back = viaJson(v) as Record<string, unknown>;
  assert.equal(Object.getPrototypeOf(back), Object.prototype);
  assert.deepEqual(Object.keys(back), ["__proto__", "a"]);
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
});

Deno.test("codec: values it cannot carry, and data it did not make, are refused", () => {
  for (const v of [/re/, new Int16Array(2), new Error("x"), () => 1, Symbol("s")]) {
    assert.throws(() => encodeValue({ v }), CodecError);
  }
  for (
    const d of [
      { $t: "bigint", v: "1.5" },
      { $t: "u64", v: "-1" },
      { $t: "bytes", v: "!!" },
      { $t: "number", v: "seven" },
      { $t: "map", v: [[1]] },
      { $t: "nope", v: null },
    ]
  ) {
    assert.throws(() => decodeValue(d), CodecError, JSON.stringify(d));
  }
});

Deno.test("codec: keys keep every part type, and other parts are refused", () => {
  const key: Deno.KvKey = ["a", 1.5, -3n, true, new Uint8Array([9, 0])];
  assert.deepStrictEqual(decodeKey(JSON.parse(JSON.stringify(encodeKey(key)))), key);
  assert.throws(() => decodeKey(["a", { x: 1 }]), CodecError);
  assert.throws(() => decodeKey("a"), CodecError);
  assert.throws(() => decodeKey([null]), CodecError);
});

Deno.test("codec: serializedBound is at least V8's serialized size", () => {
  const values = [
    EVERY_TYPE,
    "x".repeat(60_000),
    "中".repeat(30_000),
    Array.from({ length: 5000 }, (_, i) => i + 0.5),
    Array.from({ length: 5000 }, (_, i) => i),
    2n ** 1000n,
    { a: [{ b: "c" }, 1n, null], d: new Uint8Array(1000) },
  ];
  for (const v of values) {
    // node:v8 adds a two-byte header that KV does not store.
    assert.ok(serializedBound(v) >= serialize(v).length - 2, String(v).slice(0, 40));
  }
});
