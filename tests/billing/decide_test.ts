/**
 * The actor's pure decision core, without KV: each batch is decided on a state read from a plain
 * map by key, its writes applied to the map, and the books invariants checked after every batch.
 */
import assert from "node:assert/strict";
import { decide, readKeys, stateOf } from "../../lib/billing/decide.ts";
import type { Op } from "../../lib/billing/ops.ts";
import { balanceKey, holdKey, keySpendKey } from "../../lib/kv/schema.ts";
import { keyString } from "../../lib/kv/util.ts";
import type { ApiKey, BalanceState, Hold, KeySpend, UsageEvent } from "../../lib/billing/types.ts";
import { usageEvent } from "../_fixtures.ts";

const ACCT = "acct_core";
const NOW = Date.parse("2027-03-01T12:00:00Z");

function apiKey(id: string, fields: Partial<ApiKey> = {}): ApiKey {
  return {
    id,
    account_id: ACCT,
    name: id,
    scope: "inference",
    prefix: "er-x",
    hash: "h",
    created_at: "2027-01-01T00:00:00Z",
    disabled: false,
    revoked_at: null,
    credit_limit: null,
    limit_reset: null,
    expires_at: null,
    rate_limit_rpm: null,
    ...fields,
  };
}

/** A KV stand-in: entries by `keyString`, each write a new versionstamp. */
class Store {
  entries = new Map<string, Deno.KvEntryMaybe<unknown>>();
  #stamp = 0;
  live = new Set<string>();
  /** Σ usage events' costs recorded, and every event. */
  events: UsageEvent[] = [];

  get = (key: Deno.KvKey): Deno.KvEntryMaybe<unknown> =>
    this.entries.get(keyString(key)) ?? { key, value: null, versionstamp: null };

  set(key: Deno.KvKey, value: unknown) {
    this.entries.set(keyString(key), { key, value, versionstamp: String(++this.#stamp) });
  }

  value<T>(key: Deno.KvKey): T | null {
    return this.get(key).value as T | null;
  }

  /** Decides `ops` as the actor would (reads by key, checks, writes) and applies the writes. */
  run(ops: Op[], now = NOW) {
    for (const k of readKeys(ACCT, ops)) this.get(k);
    const state = stateOf(ACCT, ops, this.get);
    const d = decide(state, ops, { now, isLive: (id) => this.live.has(id) });
    for (const c of d.checks) {
      assert.equal(this.get(c.key).versionstamp, c.versionstamp, "checked entries are current");
    }
    for (const w of d.sets) this.set(w.key, w.value);
    for (const k of d.deletes) this.entries.delete(keyString(k));
    for (const id of d.unserved) this.live.delete(id);
    for (const h of d.reserved) this.live.add(h.id);
    this.events.push(...d.events);
    this.assertInvariants();
    return d;
  }

  holds(): Hold[] {
    return [...this.entries.values()].filter((e) => e.key[0] === "hold").map((e) =>
      e.value as Hold
    );
  }

  /** reserved = Σ holds, per account and per key; the balance never below zero by usage. */
  assertInvariants() {
    const bal = this.value<BalanceState>(balanceKey(ACCT));
    if (!bal) return;
    const holds = this.holds();
    assert.equal(bal.reserved, holds.reduce((s, h) => s + h.amount, 0n), "reserved = Σ holds");
    for (const e of this.entries.values()) {
      if (e.key[0] !== "key_spend") continue;
      const keyId = String(e.key[2]);
      const held = holds.filter((h) => h.key_id === keyId).reduce((s, h) => s + h.amount, 0n);
      assert.equal((e.value as KeySpend).reserved, held, `key ${keyId}: reserved = Σ its holds`);
    }
    assert.ok(bal.balance >= 0n, "never below zero");
  }
}

function store(credit: bigint, keys: ApiKey[] = [apiKey("key_a")]) {
  const s = new Store();
  for (const k of keys) s.set(["key", k.id], k);
  if (credit) {
    s.run([{
      kind: "credit",
      type: "adjustment",
      amount: credit,
      description: "grant",
      reference: null,
    }]);
  }
  return s;
}

const reserve = (holdId: string, amount: bigint, keyId = "key_a"): Op => ({
  kind: "reserve",
  keyId,
  holdId,
  amount,
  ttlMs: 60_000,
});
const settle = (holdId: string, cost: bigint, keyId = "key_a"): Op => ({
  kind: "settle",
  keyId,
  holdId,
  cost,
  event: usageEvent({ account_id: ACCT, key_id: keyId, cost }),
});

Deno.test("decide: reserves are granted while the available balance covers them, then refused with what is left", () => {
  const s = store(1000n);
  const d = s.run([reserve("h1", 400n), reserve("h2", 400n), reserve("h3", 400n)]);
  assert.deepEqual(d.results, [
    { ok: true },
    { ok: true },
    { ok: false, code: "insufficient_credits", available: 200n },
  ]);
  assert.equal(s.holds().length, 2);
  assert.equal(s.value<BalanceState>(balanceKey(ACCT))!.reserved, 800n);
});

Deno.test("decide: a settle releases its hold, debits the cost and records the event with the balance after", () => {
  const s = store(1000n);
  s.run([reserve("h1", 400n)]);
  const d = s.run([settle("h1", 150n)]);
  assert.deepEqual(d.results, [{ balanceAfter: 850n, charged: 150n }]);
  assert.equal(d.events[0].cost, 150n);
  assert.equal(d.events[0].balance_after, 850n);
  const bal = s.value<BalanceState>(balanceKey(ACCT))!;
  assert.deepEqual([bal.balance, bal.reserved, bal.total_used], [850n, 0n, 150n]);
  assert.equal(s.value<KeySpend>(keySpendKey(ACCT, "key_a"))!.spend, 150n);
  assert.equal(s.live.size, 0, "the hold is no longer served");
});

Deno.test("decide: a cost beyond what is left is capped, never overdrawing or eating others' holds", () => {
  const s = store(1000n);
  s.run([reserve("h1", 300n), reserve("h2", 500n)]);
  const d = s.run([settle("h1", 900n)]);
  // 1000 − 500 (h2 still held) = 500 chargeable.
  assert.deepEqual(d.results, [{ balanceAfter: 500n, charged: 500n }]);
});

Deno.test("decide: release and expire return the hold without charge; expire only once past due", () => {
  const s = store(1000n);
  s.run([reserve("h1", 300n), reserve("h2", 300n)]);
  s.run([{ kind: "release", keyId: "key_a", holdId: "h1", event: null }]);
  s.run([{ kind: "expire", keyId: "key_a", holdId: "h2" }]);
  assert.equal(s.holds().length, 1, "not yet expired");
  s.run([{ kind: "expire", keyId: "key_a", holdId: "h2" }], NOW + 60_000);
  assert.equal(s.holds().length, 0);
  assert.equal(s.value<BalanceState>(balanceKey(ACCT))!.balance, 1000n);
});

Deno.test("decide: renew pushes back a live hold's expiry and never recreates a gone one", () => {
  const s = store(1000n);
  s.run([reserve("h1", 300n)]);
  const d = s.run([{ kind: "renew", holdId: "h1", ttlMs: 120_000 }], NOW + 1000);
  assert.deepEqual(d.results, [NOW + 121_000]);
  assert.equal(s.value<Hold>(holdKey(ACCT, "h1"))!.expires_ms, NOW + 121_000);
  s.run([settle("h1", 10n)]);
  const again = s.run([{ kind: "renew", holdId: "h1", ttlMs: 120_000 }]);
  assert.deepEqual(again.results, [null]);
  assert.equal(s.holds().length, 0);
});

Deno.test("decide: a key's credit limit, state and rate limit are judged on its records", () => {
  const s = store(1_000_000n, [
    apiKey("key_lim", { credit_limit: 500n }),
    apiKey("key_off", { disabled: true }),
    apiKey("key_rpm", { rate_limit_rpm: 2 }),
  ]);
  const d = s.run([
    reserve("h1", 400n, "key_lim"),
    reserve("h2", 200n, "key_lim"),
    reserve("h3", 1n, "key_off"),
    reserve("h4", 1n, "key_gone"),
    reserve("h5", 1n, "key_rpm"),
    reserve("h6", 1n, "key_rpm"),
    reserve("h7", 1n, "key_rpm"),
  ]);
  assert.deepEqual(d.results, [
    { ok: true },
    { ok: false, code: "key_limit_exceeded", remaining: 100n },
    { ok: false, code: "key_disabled" },
    { ok: false, code: "invalid_api_key" },
    { ok: true },
    { ok: true },
    { ok: false, code: "rate_limited", rpm: 2, retryAfterSec: 60 },
  ]);
});

Deno.test("decide: a credit with a once-key applies once and replays what it stored", () => {
  const s = store(0n);
  const credit: Op = {
    kind: "credit",
    type: "purchase",
    amount: 500n,
    description: "pack",
    reference: "pi_1",
    once: { key: ["once", ACCT, "pi_1"], value: (e) => e.id },
  };
  const first = s.run([credit, credit]);
  const [a, b] = first.results as { replayed: boolean; entry?: { id: string } }[];
  assert.equal(a.replayed, false);
  assert.deepEqual(b, { replayed: true, stored: a.entry!.id });
  const bal = s.value<BalanceState>(balanceKey(ACCT))!;
  assert.deepEqual([bal.balance, bal.total_purchased], [500n, 500n]);
});
