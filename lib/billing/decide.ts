/**
 * The account actor's decisions, pure: given an account's entries (read by key, as this process
 * last committed or read them), this process's lease on it, and a batch of operations, each
 * operation's result, the checks and writes of the atomic that commits the batch, the usage events
 * it records, and what changes in this process's lease. No KV, no clock, no process state: the
 * scheduler (actor.ts) reads, commits, and remembers what was committed.
 *
 * A batch that only settles or releases holds granted from this process's lease writes nothing
 * but the lease (and the events): two processes serving one account never write the same key in
 * the common case. Anything else that moves money (a shared hold, a credit, a lease topped up,
 * folded, returned or reclaimed) writes the balance record, checked.
 */
import { apiKeyKey, balanceKey, holdKey, keySpendKey, leaseKey } from "../kv/schema.ts";
import { keyString } from "../kv/util.ts";
import type { ApiKey, BalanceState, Hold, KeySpend, Lease, UsageEvent } from "./types.ts";
import type { Op } from "./ops.ts";
import type { LeaseEffect, LeasePolicy, LocalHold, LocalLeaseView } from "./local_lease.ts";
import { Batch, type LeaseCounts } from "./batch.ts";
import { leaseAction, reclaim } from "./lease_ops.ts";
import type { AccountEvent } from "../webhooks/events.ts";

type Entry<T> = Deno.KvEntryMaybe<T>;

/** One account's entries that a batch reads, each found by its id. */
export interface AccountState {
  accountId: string;
  balance: Entry<BalanceState>;
  /** By key id. */
  keys: ReadonlyMap<string, Entry<ApiKey>>;
  /** By key id. */
  spends: ReadonlyMap<string, Entry<KeySpend>>;
  /** Holds written to KV, by hold id. */
  holds: ReadonlyMap<string, Entry<Hold>>;
  /** Once-keys of credits, by `keyString`. */
  once: ReadonlyMap<string, Entry<unknown>>;
  /** This process's lease on the account, when it has one. */
  lease: Entry<Lease> | null;
  /** Other processes' leases named by reclaims, by lease id. */
  others: ReadonlyMap<string, Entry<Lease>>;
}

/** What a decision needs of this process (see `LocalLeases`). */
export interface Local {
  lease: LocalLeaseView | null;
  /** Holds of this process's leases that another process reclaimed. */
  orphans: ReadonlyMap<string, LocalHold>;
}

/** A value the atomic sets. `state`: one of the account's entries, remembered once committed. */
export interface Write {
  key: Deno.KvKey;
  value: unknown;
  expireIn?: number;
  state: boolean;
}

export interface Decision {
  /** Each operation's result, in the batch's order. */
  results: unknown[];
  /** The entries the decisions rest on: a write elsewhere since fails the commit. */
  checks: Entry<unknown>[];
  sets: Write[];
  deletes: Deno.KvKey[];
  /** Usage events to commit as outbox entries. */
  events: UsageEvent[];
  /** Counters added to (`sum`): the ledger's running totals of the rows this batch writes. */
  sums: { key: Deno.KvKey; value: bigint }[];
  /** Customer webhook events committed with this batch (`emitEvent`). */
  accountEvents: AccountEvent[];
  /** Holds reserved by this batch (their requests are alive in this process). */
  reserved: Hold[];
  /** Holds no longer served here: settled, released, expired, or found gone. */
  unserved: string[];
  /** Holds renewed by this batch, as written. */
  renewed: Hold[];
  /** What changes in this process's lease, if anything. */
  lease: LeaseEffect | null;
  /** Orphaned holds settled or released by this batch. */
  orphansDone: string[];
  /** What this batch did to leases, counted by the actor (`GET /v1/admin/stats`). */
  counts: LeaseCounts;
}

export interface DecideContext {
  now: number;
  /** Whether a shared hold's request is alive in this process (only those are renewed). */
  isLive(holdId: string): boolean;
  /** This process's id: its leases' owner. */
  owner: string;
  /** Lease sizing; null when leases are off. */
  policy: LeasePolicy | null;
  /** The id of a lease this batch takes, if it takes one. */
  newLeaseId: string;
  leaseTtlMs: number;
  /** How long after a recall no process takes a lease on the account. */
  recallMs: number;
}

/** What this process's lease means for the reads: its id, keys, and which holds are its own. */
export interface LocalKeys {
  leaseId: string | null;
  leaseKeyIds: readonly string[];
  isLocalHold(holdId: string): boolean;
}

/** The keys a batch reads, each once: balance, keys and spends, KV holds, once-keys, leases. */
export function readKeys(accountId: string, ops: readonly Op[], local: LocalKeys): Deno.KvKey[] {
  const keys = new Map<string, Deno.KvKey>();
  const add = (k: Deno.KvKey) => keys.set(keyString(k), k);
  visitReads(accountId, ops, local, add);
  return [...keys.values()];
}

function visitReads(
  accountId: string,
  ops: readonly Op[],
  local: LocalKeys,
  add: (k: Deno.KvKey, kind?: "key" | "spend" | "hold" | "once" | "other", id?: string) => void,
) {
  add(balanceKey(accountId));
  const keyOf = (id: string) => {
    add(apiKeyKey(id), "key", id);
    add(keySpendKey(accountId, id), "spend", id);
  };
  if (local.leaseId) {
    add(leaseKey(accountId, local.leaseId));
    // A fold moves the lease's deltas into its keys' spends.
    for (const id of local.leaseKeyIds) keyOf(id);
  }
  for (const op of ops) {
    if ("keyId" in op) keyOf(op.keyId);
    if ("holdId" in op && !local.isLocalHold(op.holdId)) {
      add(holdKey(accountId, op.holdId), "hold", op.holdId);
    }
    if (op.kind === "credit" && op.once) add(op.once.key, "once", keyString(op.once.key));
    if (op.kind === "reclaim") {
      add(leaseKey(accountId, op.leaseId), "other", op.leaseId);
      for (const id of op.keyIds) keyOf(id);
    }
  }
}

/** The account's state for `ops`, each entry found by `get` (a read or a cache, by key). */
export function stateOf(
  accountId: string,
  ops: readonly Op[],
  local: LocalKeys,
  get: (key: Deno.KvKey) => Entry<unknown>,
): AccountState {
  const keys = new Map<string, Entry<ApiKey>>();
  const spends = new Map<string, Entry<KeySpend>>();
  const holds = new Map<string, Entry<Hold>>();
  const once = new Map<string, Entry<unknown>>();
  const others = new Map<string, Entry<Lease>>();
  const maps = { key: keys, spend: spends, hold: holds, once, other: others } as Record<
    string,
    Map<string, Entry<unknown>>
  >;
  visitReads(accountId, ops, local, (k, kind, id) => {
    if (kind) maps[kind].set(id!, get(k));
  });
  return {
    accountId,
    balance: get(balanceKey(accountId)) as Entry<BalanceState>,
    keys,
    spends,
    holds,
    once,
    lease: local.leaseId ? get(leaseKey(accountId, local.leaseId)) as Entry<Lease> : null,
    others,
  };
}

/**
 * Decides a batch of one account's operations, in order, on `state` and this process's lease.
 */
export function decide(
  state: AccountState,
  ops: readonly Op[],
  local: Local,
  ctx: DecideContext,
): Decision {
  const b = new Batch(state, local, ctx);
  const { d } = b;
  for (const op of ops) {
    switch (op.kind) {
      case "reserve":
        d.results.push(b.reserve(op));
        break;
      case "settle":
        d.results.push(b.settle(op));
        break;
      case "release":
        b.release(op);
        d.results.push(undefined);
        break;
      case "expire": {
        const h = b.holds.get(op.holdId);
        if (h && h.expires_ms <= ctx.now) b.unhold(op.holdId);
        d.results.push(undefined);
        break;
      }
      case "renew": {
        const h = b.holds.get(op.holdId);
        b.shared = true;
        if (!h || !ctx.isLive(op.holdId)) {
          // Its request settled, or a sweep released it meanwhile: nothing left to keep.
          d.unserved.push(op.holdId);
          d.results.push(null);
          break;
        }
        const expires = ctx.now + op.ttlMs;
        if (expires > h.expires_ms) {
          const hold = { ...h, expires_ms: expires };
          b.holds.set(op.holdId, hold);
          d.sets.push({ key: holdKey(state.accountId, op.holdId), value: hold, state: true });
          d.renewed.push(hold);
        }
        d.results.push(b.holds.get(op.holdId)!.expires_ms);
        break;
      }
      case "record":
        d.events.push(op.event);
        d.results.push(undefined);
        break;
      case "credit":
        d.results.push(b.credit(op));
        break;
      case "lease":
        leaseAction(b, op.action);
        d.results.push(undefined);
        break;
      case "reclaim":
        d.results.push(reclaim(b, op));
        break;
    }
  }
  return b.finish();
}
