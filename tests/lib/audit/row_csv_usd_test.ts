import assert from "node:assert/strict";
import { csvUsd } from "../../../lib/audit/row.ts";
import { formatUsd } from "../../../lib/money.ts";

Deno.test("csvUsd writes exactly what formatUsd writes", () => {
  const edge = [
    0n,
    1n,
    10n,
    100_000_000n,
    123_456_789n,
    999_999_999n,
    1_000_000_000n,
    1_000_000_001n,
    1_500_000_000n,
    12_500_000_000n,
    9_007_199_254_740_991n, // 2^53 - 1, the last amount of the fast path
    9_007_199_254_740_992n,
    10n ** 20n + 7n,
    -1n,
    -1_500_000_000n,
  ];
  for (let k = 1n; k < 9_007_199n; k *= 3n) edge.push(k * 1_000_000_000n - 1n, k * 1_000_000_000n);
  // A deterministic spread over every magnitude up to past 2^53.
  let s = 0x9e3779b9n;
  for (let i = 0; i < 20_000; i++) {
    s = (s * 6364136223846793005n + 1442695040888963407n) % 2n ** 64n;
    edge.push(s % 10n ** BigInt(1 + (i % 18)));
  }
  for (const n of edge) assert.equal(csvUsd(n), formatUsd(n), String(n));
});
