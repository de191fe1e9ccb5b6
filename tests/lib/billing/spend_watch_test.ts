import assert from "node:assert/strict";
import { balanceCrossings, keyCrossings } from "../../../lib/billing/spend_watch.ts";
import type { BalanceMove } from "../../../lib/billing/decide.ts";

const settle = (after: bigint, charged: bigint): BalanceMove => ({
  kind: "settle",
  key: null,
  charged,
  balance_after: after,
  key_spend: null,
});
const known = (after: bigint): BalanceMove => ({ kind: "known", balance_after: after });

Deno.test("balanceCrossings: a settlement from at or above a threshold to below it crosses it; at it, or below already, does not", () => {
  assert.deepEqual(balanceCrossings(null, [settle(4n, 2n)], [5n]), { peak: 4n, crossed: [5n] });
  assert.deepEqual(balanceCrossings(null, [settle(5n, 1n)], [5n]).crossed, [], "at is not below");
  assert.deepEqual(balanceCrossings(null, [settle(5n, 1n), settle(4n, 1n)], [5n]).crossed, [5n]);
  assert.deepEqual(balanceCrossings(4n, [settle(3n, 1n)], [5n]).crossed, [], "below already");
  // Several thresholds in one settlement, each once over many moves.
  assert.deepEqual(
    balanceCrossings(10n, [settle(6n, 4n), settle(2n, 4n), settle(1n, 1n)], [8n, 3n]).crossed,
    [8n, 3n],
  );
});

Deno.test("balanceCrossings: what is learned between settlements counts (a fold showing another process's debits, a credit)", () => {
  // Known 9, then the balance record shows the other process's debits: 4. Crossed there.
  assert.deepEqual(balanceCrossings(9n, [known(4n)], [5n]), { peak: 4n, crossed: [5n] });
  // Known 9; the next settlement's own view already has the drop (a fresh read): still crossed.
  assert.deepEqual(balanceCrossings(9n, [settle(3n, 1n)], [5n]).crossed, [5n]);
  // A credit seen (the record rose), then a settlement below: crossed from the credited balance.
  assert.deepEqual(balanceCrossings(3n, [known(12n), settle(4n, 8n)], [5n]).crossed, [5n]);
  assert.deepEqual(balanceCrossings(3n, [known(4n)], [5n]).crossed, [], "never at or above");
});

Deno.test("keyCrossings: a spend from below a fraction of the limit to at or past it crosses it, once per period", () => {
  const bps = [8000, 10000];
  assert.deepEqual(keyCrossings(undefined, "d:1", 80n, 10n, 100n, bps), [8000]);
  assert.deepEqual(keyCrossings(undefined, "d:1", 79n, 10n, 100n, bps), []);
  assert.deepEqual(keyCrossings(undefined, "d:1", 100n, 30n, 100n, bps), [8000, 10000]);
  assert.deepEqual(keyCrossings({ period: "d:1", spend: 85n }, "d:1", 90n, 5n, 100n, bps), []);
  // Another process's debits came in between: from what this process last knew.
  assert.deepEqual(keyCrossings({ period: "d:1", spend: 50n }, "d:1", 90n, 5n, 100n, bps), [
    8000,
  ]);
  // A new period starts from zero, whatever the last one reached.
  assert.deepEqual(keyCrossings({ period: "d:1", spend: 95n }, "d:2", 85n, 85n, 100n, bps), [
    8000,
  ]);
});
