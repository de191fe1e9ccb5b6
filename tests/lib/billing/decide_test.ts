/**
 * The actor's pure decision core, without KV: each batch is decided on a state read from a plain
 * map by key, its writes applied to the map, and the books invariants checked after every batch.
 * Two "processes" (each its own owner id and lease state, as `AccountActors` keeps them) share the
 * map, so leases are taken, spent, recalled and reclaimed as across processes.
 */
import assert from "node:assert/strict";
import { decide, readKeys, stateOf } from "../../../lib/billing/decide.ts";
import { type LeasePolicy, LocalLeases } from "../../../lib/billing/local_lease.ts";
import { keySpendView } from "../../../lib/billing/lease.ts";
import type { Op } from "../../../lib/billing/ops.ts";
import { apiKeyKey, balanceKey, holdKey, keySpendKey } from "../../../lib/kv/schema.ts";
import { keyString } from "../../../lib/kv/util.ts";
import type {
  ApiKey,
  BalanceState,
  Hold,
  KeySpend,
  Lease,
  UsageEvent,
} from "../../../lib/billing/types.ts";
import { apiKeyRecord, usageEvent } from "../../_fixtures.ts";

const ACCT = "acct_core";
const NOW = Date.parse("2027-03-01T12:00:00Z");
const TTL = 10_000;
const apiKey = (id: string, fields: Partial<ApiKey> = {}) => apiKeyRecord(id, ACCT, fields);

/** A KV stand-in: entries by `keyString`, each write a new versionstamp. */
class Store {
  entries = new Map<string, Deno.KvEntryMaybe<unknown>>();
  #stamp = 0;
  /** Every usage event committed, and the net of every credit. */
  events: UsageEvent[] = [];
  credited = 0n;
  /** Credit was taken back (a negative adjustment): the available balance may go below zero. */
  takenBack = false;
  procs: Proc[] = [];

  get = (key: Deno.KvKey): Deno.KvEntryMaybe<unknown> =>
    this.entries.get(keyString(key)) ?? { key, value: null, versionstamp: null };

  set(key: Deno.KvKey, value: unknown) {
    this.entries.set(keyString(key), {
      key,
      value,
      versionstamp: String(++this.#stamp).padStart(20, "0"),
    });
  }

  value<T>(key: Deno.KvKey): T | null {
    return this.get(key).value as T | null;
  }

  list<T>(prefix: string): T[] {
    return [...this.entries.values()].filter((e) => e.key[0] === prefix).map((e) => e.value as T);
  }

  bal = () => this.value<BalanceState>(balanceKey(ACCT))!;
  spend = (keyId: string) => this.value<KeySpend>(keySpendKey(ACCT, keyId));

  /** The books: every invariant the actor keeps, across every process's leases and holds. */
  assertInvariants() {
    const bal = this.value<BalanceState>(balanceKey(ACCT));
    if (!bal) return;
    const holds = this.list<Hold>("hold");
    const leases = this.list<Lease>("lease");
    const sum = <T>(xs: T[], f: (x: T) => bigint) => xs.reduce((s, x) => s + f(x), 0n);
    assert.equal(bal.reserved, sum(holds, (h) => h.amount), "reserved = Σ shared holds");
    assert.equal(bal.leased ?? 0n, sum(leases, (l) => l.granted), "leased = Σ lease.granted");
    assert.equal(bal.leases ?? 0, leases.length, "leases = their count");
    const spent = sum(leases, (l) => l.spent);
    const charged = sum(this.events, (e) => e.cost);
    assert.equal(bal.balance - spent, this.credited - charged, "true balance = Σ ledger");
    assert.equal(bal.total_used + spent, charged, "total used = Σ debits");
    if (!this.takenBack) {
      assert.ok(bal.balance - bal.reserved - (bal.leased ?? 0n) >= 0n, "available never negative");
    }
    for (const l of leases) {
      assert.ok(l.spent <= l.granted, "a lease never spends past its credit");
      const p = this.procs.find((p) => p.leases.view(ACCT)?.id === l.id);
      const held = p?.leases.view(ACCT)?.held ?? 0n;
      assert.ok(l.spent + held <= l.granted, "its local holds fit what is left of it");
    }
    for (const e of this.entries.values()) {
      if (e.key[0] !== "key_spend") continue;
      const keyId = String(e.key[2]);
      const s = e.value as KeySpend;
      const own = holds.filter((h) => h.key_id === keyId);
      assert.equal(s.reserved, sum(own, (h) => h.amount), `key ${keyId}: reserved = Σ its holds`);
      const slices = sum(leases, (l) => l.keys[keyId]?.slice ?? 0n);
      assert.equal(s.leased ?? 0n, slices, `key ${keyId}: leased = Σ its slices`);
      const key = this.value<ApiKey>(apiKeyKey(keyId));
      const view = keySpendView(s, keyId, key?.limit_reset ?? null, leases, NOW);
      const keyCharged = sum(this.events.filter((x) => x.key_id === keyId), (x) => x.cost);
      assert.equal(view.spend, keyCharged, `key ${keyId}: spend seen = Σ its debits`);
      if (key?.credit_limit !== null && key?.credit_limit !== undefined) {
        assert.ok(view.spend <= key.credit_limit, `key ${keyId}: within its limit`);
      }
    }
  }
}

/** One process: its owner id, its leases, its live shared holds. */
class Proc {
  leases = new LocalLeases();
  live = new Set<string>();
  #n = 0;
  constructor(readonly store: Store, readonly owner: string) {
    store.procs.push(this);
  }

  /** Decides `ops` as the actor would (reads by key, checks, writes) and applies the writes. */
  run(ops: Op[], o: { now?: number; policy?: LeasePolicy | null; recallMs?: number } = {}) {
    const s = this.store;
    const now = o.now ?? NOW;
    const view = this.leases.view(ACCT);
    const local = {
      leaseId: view?.id ?? null,
      leaseKeyIds: view ? [...view.keys.keys()] : [],
      isLocalHold: (id: string) => !!view?.holds.has(id) || this.leases.orphans.has(id),
    };
    for (const k of readKeys(ACCT, ops, local)) s.get(k);
    const state = stateOf(ACCT, ops, local, s.get);
    const d = decide(state, ops, { lease: view, orphans: this.leases.orphans }, {
      now,
      isLive: (id) => this.live.has(id),
      owner: this.owner,
      policy: o.policy === undefined ? null : o.policy,
      newLeaseId: `lease_${this.owner}_${++this.#n}`,
      leaseTtlMs: TTL,
      recallMs: o.recallMs ?? 2000,
    });
    for (const c of d.checks) {
      assert.equal(s.get(c.key).versionstamp, c.versionstamp, "checked entries are current");
    }
    if (d.lease) this.leases.before(ACCT, d.lease, now);
    for (const w of d.sets) s.set(w.key, w.value);
    for (const k of d.deletes) s.entries.delete(keyString(k));
    if (d.lease) this.leases.after(ACCT, d.lease, true, now);
    for (const id of d.orphansDone) this.leases.orphans.delete(id);
    for (const id of d.unserved) this.live.delete(id);
    for (const h of d.reserved) this.live.add(h.id);
    s.events.push(...d.events);
    for (const r of d.results) {
      const e = (r as { entry?: { amount: bigint } })?.entry;
      if (e) s.credited += e.amount;
      if (e && e.amount < 0n) s.takenBack = true;
    }
    s.assertInvariants();
    return d;
  }

  /** The fast path: a hold from this process's lease, no decision, no KV. */
  tryLocal(holdId: string, amount: bigint, key = apiKey("key_a"), now = NOW) {
    const ok = this.leases.tryReserve(ACCT, key, holdId, amount, now, TTL / 2);
    this.store.assertInvariants();
    return ok;
  }
}

function setup(credit: bigint, keys: ApiKey[] = [apiKey("key_a")]) {
  const s = new Store();
  for (const k of keys) s.set(apiKeyKey(k.id), k);
  const a = new Proc(s, "proc_a");
  const b = new Proc(s, "proc_b");
  if (credit) a.run([grant(credit)]);
  return { s, a, b };
}

const grant = (amount: bigint): Op => ({
  kind: "credit",
  type: "adjustment",
  amount,
  description: "grant",
  reference: null,
});
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
const lease = (action: "topup" | "sync" | "return"): Op => ({ kind: "lease", action });
/** Leases on: want 1000 free, at least 100 worth leasing. */
const POLICY: LeasePolicy = { want: 1000n, least: 100n };

// ---- the shared path (no leases)

Deno.test("decide: reserves are granted while the available balance covers them, then refused with what is left", () => {
  const { s, a } = setup(1000n);
  const d = a.run([reserve("h1", 400n), reserve("h2", 400n), reserve("h3", 400n)]);
  assert.deepEqual(d.results, [
    { ok: true },
    { ok: true },
    { ok: false, code: "insufficient_credits", available: 200n },
  ]);
  assert.equal(s.list<Hold>("hold").length, 2);
  assert.equal(s.bal().reserved, 800n);
});

Deno.test("decide: a settle releases its hold, debits the cost and records the event with the balance after", () => {
  const { s, a } = setup(1000n);
  a.run([reserve("h1", 400n)]);
  const d = a.run([settle("h1", 150n)]);
  assert.deepEqual(d.results, [{ balanceAfter: 850n, charged: 150n }]);
  assert.equal(d.events[0].balance_after, 850n);
  assert.deepEqual([s.bal().balance, s.bal().reserved, s.bal().total_used], [850n, 0n, 150n]);
  assert.equal(s.spend("key_a")!.spend, 150n);
  assert.equal(a.live.size, 0, "the hold is no longer served");
});

Deno.test("decide: a cost beyond what is left is capped, never overdrawing or eating others' holds", () => {
  const { a } = setup(1000n);
  a.run([reserve("h1", 300n), reserve("h2", 500n)]);
  const d = a.run([settle("h1", 900n)]);
  assert.deepEqual(d.results, [{ balanceAfter: 500n, charged: 500n }]);
});

Deno.test("decide: release and expire give the hold back to the account and its key; expire only once past due", () => {
  const { s, a } = setup(1000n);
  a.run([reserve("h1", 300n), reserve("h2", 300n)]);
  a.run([{ kind: "release", keyId: "key_a", holdId: "h1", event: null }]);
  a.run([{ kind: "expire", keyId: "key_a", holdId: "h2" }]);
  assert.equal(s.list<Hold>("hold").length, 1, "not yet expired");
  a.run([{ kind: "expire", keyId: "key_a", holdId: "h2" }], { now: NOW + 60_000 });
  assert.equal(s.list<Hold>("hold").length, 0);
  assert.equal(s.spend("key_a")!.reserved, 0n);
  assert.equal(s.bal().balance, 1000n);
});

Deno.test("decide: renew pushes back a live hold's expiry and never recreates a gone one", () => {
  const { s, a } = setup(1000n);
  a.run([reserve("h1", 300n)]);
  const d = a.run([{ kind: "renew", holdId: "h1", ttlMs: 120_000 }], { now: NOW + 1000 });
  assert.deepEqual(d.results, [NOW + 121_000]);
  assert.equal(s.value<Hold>(holdKey(ACCT, "h1"))!.expires_ms, NOW + 121_000);
  a.run([settle("h1", 10n)]);
  const again = a.run([{ kind: "renew", holdId: "h1", ttlMs: 120_000 }]);
  assert.deepEqual(again.results, [null]);
  assert.equal(s.list<Hold>("hold").length, 0);
});

Deno.test("decide: a key's credit limit, state and rate limit are judged on its records", () => {
  const { a } = setup(1_000_000n, [
    apiKey("key_lim", { credit_limit: 500n }),
    apiKey("key_off", { disabled: true }),
    apiKey("key_rpm", { rate_limit_rpm: 2 }),
  ]);
  const d = a.run([
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

Deno.test("decide: a refusal on the key's record rests on it: the record is checked", () => {
  const { a } = setup(1000n, [apiKey("key_off", { disabled: true })]);
  const d = a.run([reserve("h1", 10n, "key_off")], { policy: POLICY });
  assert.deepEqual(d.results, [{ ok: false, code: "key_disabled" }]);
  assert.ok(d.checks.some((c) => c.key[0] === "key"), "a key enabled elsewhere fails the commit");
});

Deno.test("decide: a credit with a once-key applies once and replays what it stored", () => {
  const { s, a } = setup(0n);
  const credit: Op = {
    kind: "credit",
    type: "purchase",
    amount: 500n,
    description: "pack",
    reference: "pi_1",
    once: { key: ["once", ACCT, "pi_1"], value: (e) => e.id },
  };
  const first = a.run([credit, credit]);
  const [x, y] = first.results as { replayed: boolean; entry?: { id: string } }[];
  assert.equal(x.replayed, false);
  assert.deepEqual(y, { replayed: true, stored: x.entry!.id });
  assert.deepEqual([s.bal().balance, s.bal().total_purchased], [500n, 500n]);
});

// ---- leases

Deno.test("decide: a reserve takes a lease sized by the policy and is held in it, with no shared hold", () => {
  const { s, a } = setup(100_000n);
  const d = a.run([reserve("h1", 50n)], { policy: POLICY });
  assert.deepEqual(d.results, [{ ok: true }]);
  assert.equal(s.list<Hold>("hold").length, 0, "no hold written");
  const [l] = s.list<Lease>("lease");
  // Wanted free after the hold: 1000, so 1050 taken.
  assert.deepEqual([l.owner, l.granted, l.spent, l.held], ["proc_a", 1050n, 0n, 50n]);
  assert.deepEqual([s.bal().leased, s.bal().leases, s.bal().balance], [1050n, 1, 100_000n]);
  assert.equal(a.leases.view(ACCT)!.held, 50n);
});

Deno.test("decide: lease reserves are local; their settles write only the lease, debits folded in later", () => {
  const { s, a } = setup(100_000n);
  a.run([reserve("h1", 50n)], { policy: POLICY });
  assert.equal(a.tryLocal("h2", 50n), true, "granted from the lease with no decision");
  const before = s.get(balanceKey(ACCT)).versionstamp;
  const d = a.run([settle("h1", 30n), settle("h2", 20n)], { policy: POLICY });
  assert.deepEqual(d.results, [
    { balanceAfter: 99_970n, charged: 30n },
    { balanceAfter: 99_950n, charged: 20n },
  ]);
  assert.equal(s.get(balanceKey(ACCT)).versionstamp, before, "the balance is not written");
  assert.deepEqual(d.checks.map((c) => c.key[0]), ["lease"], "only the lease is checked");
  const [l] = s.list<Lease>("lease");
  assert.deepEqual([l.spent, l.held], [50n, 0n]);
  assert.equal(l.keys.key_a.delta.spend, 50n);
  // Returned (idle): the debits folded into the balance and the key's spend, the rest given
  // back, and not taken again in the same commit.
  a.run([lease("return")], { policy: POLICY });
  assert.deepEqual(s.list<Lease>("lease"), [], "returned: nothing held");
  assert.deepEqual([s.bal().balance, s.bal().total_used, s.bal().leased], [99_950n, 50n, 0n]);
  assert.equal(s.spend("key_a")!.spend, 50n);
});

Deno.test("decide: a lease running low is topped up with the next commit that writes it", () => {
  const { s, a } = setup(100_000n);
  a.run([reserve("h1", 50n)], { policy: POLICY });
  for (let i = 2; i <= 15; i++) assert.equal(a.tryLocal(`h${i}`, 50n), true);
  // 300 left after these: not yet below a quarter of the wanted 1000.
  a.run(Array.from({ length: 15 }, (_, i) => settle(`h${i + 1}`, 50n)), { policy: POLICY });
  assert.equal(s.list<Lease>("lease")[0].spent, 750n, "not topped up");
  for (let i = 16; i <= 17; i++) assert.equal(a.tryLocal(`h${i}`, 50n), true);
  a.run([settle("h16", 50n), settle("h17", 50n)], { policy: POLICY });
  const [l] = s.list<Lease>("lease");
  assert.equal(l.spent, 0n, "folded by the top-up");
  assert.equal(l.granted, 1000n, "topped up to the wanted size");
  assert.equal(s.bal().total_used, 850n);
});

Deno.test("decide: near exhaustion no lease is taken: the last credit is held exactly, shared", () => {
  // A quarter of 300 is less than the 100 worth leasing.
  const { s, a } = setup(300n);
  const d = a.run([reserve("h1", 200n), reserve("h2", 200n)], { policy: POLICY });
  assert.deepEqual(d.results, [
    { ok: true },
    { ok: false, code: "insufficient_credits", available: 100n },
  ]);
  assert.equal(s.list<Lease>("lease").length, 0);
  assert.equal(s.list<Hold>("hold").length, 1);
});

Deno.test("decide: a lease is not taken when a quarter of the available is less than worth leasing", () => {
  // A quarter of 1000 is 250: less than the 300 a lease must be worth.
  const { s, a } = setup(1000n);
  const d = a.run([reserve("h1", 50n)], { policy: { want: 1000n, least: 300n } });
  assert.deepEqual(d.results, [{ ok: true }]);
  assert.equal(s.list<Lease>("lease").length, 0);
  assert.equal(s.list<Hold>("hold").length, 1, "held exactly, shared");
});

Deno.test("decide: a local reserve past what the lease has left is not granted there", () => {
  const { a } = setup(100_000n);
  a.run([reserve("h1", 50n)], { policy: POLICY });
  // 1050 granted, 50 held: 1000 left.
  assert.equal(a.tryLocal("h2", 1000n), true);
  assert.equal(a.tryLocal("h3", 1n), false, "nothing left: the actor decides");
});

Deno.test("decide: a commit that writes the balance folds the lease in, and writes the lease with it", () => {
  const { s, a } = setup(100_000n);
  a.run([reserve("h1", 50n)], { policy: POLICY });
  a.run([settle("h1", 40n)], { policy: POLICY });
  assert.equal(s.list<Lease>("lease")[0].spent, 40n);
  // A credit writes the balance: the lease's debit moves into it, and the lease says so.
  a.run([grant(1000n)], { policy: POLICY });
  const [l] = s.list<Lease>("lease");
  assert.equal(l.spent, 0n);
  assert.deepEqual([s.bal().balance, s.bal().total_used], [100_960n, 40n]);
});

Deno.test("decide: a cost past its lease hold gives the lease back and is charged shared, as a shared hold's would be", () => {
  const { s, a } = setup(100_000n);
  a.run([reserve("h1", 50n)], { policy: POLICY });
  const d = a.run([settle("h1", 5000n)]);
  assert.deepEqual(d.results, [{ balanceAfter: 95_000n, charged: 5000n }]);
  assert.deepEqual(s.list<Lease>("lease"), [], "given back: it held nothing else");
  assert.equal(s.bal().balance, 95_000n);
});

Deno.test("decide: a refusal while another process's lease holds the credit recalls it; the retry is granted once it is given back", () => {
  const { s, a, b } = setup(10_000n);
  // b leases most of what is wanted (a quarter of the available at most).
  b.run([reserve("hb", 100n)], { policy: { want: 5000n, least: 100n } });
  assert.equal(s.bal().leased, 2500n);
  // a, near exhaustion for its own policy, asks for more than is available outside b's lease.
  const big = 9000n;
  const r = a.run([reserve("ha", big)], { policy: { want: 100_000n, least: 100_000n } });
  assert.deepEqual(r.results, [{
    ok: false,
    code: "insufficient_credits",
    available: 7500n,
    recall: true,
  }]);
  assert.equal(s.bal().recall_ms, NOW, "the recall is written");
  // b notices (its tick reads the balance) and gives back what its holds do not need.
  b.run([lease("return")], { now: NOW + 100 });
  assert.equal(s.list<Lease>("lease")[0].granted, 100n, "b keeps what its hold needs");
  // While recalled, b takes no new lease credit.
  b.run([reserve("hb2", 100n)], { now: NOW + 150, policy: { want: 5000n, least: 100n } });
  assert.equal(s.list<Lease>("lease")[0].granted, 100n);
  const again = a.run([reserve("ha", big)], { now: NOW + 200 });
  assert.deepEqual(again.results, [{ ok: true }]);
});

Deno.test("decide: a recall is honoured by any commit of the lease, not only by a return", () => {
  const { s, a, b } = setup(10_000n);
  b.run([reserve("hb", 100n), reserve("hb2", 100n)], { policy: POLICY });
  a.run([reserve("ha", 9000n)], { policy: { want: 100_000n, least: 100_000n } });
  assert.equal(s.bal().recall_ms, NOW);
  // b settles one of its holds: the same commit gives back all but the other hold.
  b.run([settle("hb", 80n)], { now: NOW + 50, policy: POLICY });
  assert.equal(s.list<Lease>("lease")[0].granted, 100n);
  assert.equal(s.bal().leased, 100n);
});

Deno.test("decide: a refused reserve is granted from this process's own lease first", () => {
  const { s, a } = setup(4000n);
  a.run([reserve("h1", 100n)], { policy: POLICY });
  const granted = s.bal().leased!;
  assert.ok(granted > 0n);
  const d = a.run([reserve("h2", 3800n)]);
  assert.deepEqual(d.results, [{ ok: true }], "the lease's free credit went back first");
  assert.equal(s.bal().leased, 100n);
});

Deno.test("decide: a process's expired lease is reclaimed by another: debits kept, the rest returned, its holds settled shared", () => {
  const lim = apiKey("key_lim", { credit_limit: 10_000n });
  const { s, a, b } = setup(100_000n, [apiKey("key_a"), lim]);
  a.run([reserve("h1", 50n), reserve("l1", 50n, "key_lim")], { policy: POLICY });
  assert.equal(a.tryLocal("h2", 50n), true);
  a.run([settle("h1", 40n), settle("l1", 30n, "key_lim")], { policy: POLICY });
  const [l] = s.list<Lease>("lease");
  assert.ok(l.keys.key_lim.slice! > 0n, "the limited key's slice is in the lease");
  const keyIds = ["key_a", "key_lim"];
  // Not yet expired: left alone.
  const early = b.run([{ kind: "reclaim", leaseId: l.id, keyIds }]);
  assert.deepEqual(early.results, [false]);
  const late = b.run([{ kind: "reclaim", leaseId: l.id, keyIds }], { now: l.expires_ms });
  assert.deepEqual(late.results, [true]);
  assert.deepEqual(s.list<Lease>("lease"), []);
  assert.deepEqual([s.bal().balance, s.bal().leased, s.bal().total_used], [99_930n, 0n, 70n]);
  assert.equal(s.spend("key_a")!.spend, 40n);
  assert.deepEqual([s.spend("key_lim")!.spend, s.spend("key_lim")!.leased], [30n, 0n]);
  // a was only stalled: its next commit finds the lease gone; h2 is settled shared.
  const d = a.run([settle("h2", 30n)], { policy: POLICY, now: l.expires_ms + 1 });
  assert.deepEqual(d.results, [{ balanceAfter: 99_900n, charged: 30n }]);
  assert.equal(a.leases.view(ACCT), null);
  assert.equal(a.leases.orphans.size, 0);
});

Deno.test("decide: a key's credit limit is sliced into the lease and never exceeded", () => {
  const key = apiKey("key_lim", { credit_limit: 2000n });
  const { s, a, b } = setup(1_000_000n, [key]);
  a.run([reserve("a1", 100n, "key_lim")], { policy: POLICY });
  b.run([reserve("b1", 100n, "key_lim")], { policy: POLICY });
  // A quarter of the key's remaining each time: 500, then 375.
  assert.equal(s.spend("key_lim")!.leased, 875n);
  for (let i = 2; i < 10; i++) a.tryLocal(`a${i}`, 100n, key);
  assert.equal(a.leases.view(ACCT)!.held, 500n, "the slice covers five holds");
  assert.equal(a.tryLocal("a10", 100n, key), false);
  a.run(
    ["a1", "a2", "a3", "a4", "a5"].map((h) => settle(h, 100n, "key_lim")),
    { policy: POLICY },
  );
  b.run([settle("b1", 100n, "key_lim")], { policy: POLICY });
  a.run([lease("return")]);
  b.run([lease("return")]);
  assert.equal(s.spend("key_lim")!.spend, 600n);
  assert.equal(s.spend("key_lim")!.leased, 0n);
});

Deno.test("decide: a key whose limit changed is re-sliced under the new limit", () => {
  const key = apiKey("key_lim", { credit_limit: 2000n });
  const { s, a } = setup(1_000_000n, [key]);
  a.run([reserve("a1", 100n, "key_lim")], { policy: POLICY });
  s.set(apiKeyKey("key_lim"), { ...key, credit_limit: 400n });
  const d = a.run([reserve("a2", 100n, "key_lim")], { policy: POLICY });
  assert.deepEqual(d.results, [{ ok: true }]);
  const [l] = s.list<Lease>("lease");
  assert.equal(l.keys.key_lim.limit, 400n);
  assert.ok(l.keys.key_lim.slice! <= 400n);
});

Deno.test("decide: credit taken back below what leases hold recalls them", () => {
  const { s, a, b } = setup(10_000n);
  b.run([reserve("hb", 100n)], { policy: POLICY });
  a.run([grant(-9500n)]);
  assert.equal(s.bal().recall_ms, NOW);
});
