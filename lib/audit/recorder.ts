import { auditIdKey, auditKey, ledgerKey, OUTBOX_PREFIX, outboxKey } from "../kv/schema.ts";
import { getAll, isLocked, keyBytes, sleep } from "../kv/util.ts";
import { idFloor } from "../ids.ts";
import { addRollupSums } from "../usage/rollups.ts";
import type { AuditRow, LedgerEntry, UsageEvent } from "../billing/types.ts";

const MAX_CHECKS = 90;
const MAX_MUTATIONS = 900;
// Deno KV refuses an atomic whose keys (checks and mutations) total over 81,920 bytes; events of
// many accounts bring up to 96 rollup counters each, so a group is bounded by key size too.
const MAX_KEY_BYTES = 64_000;

export function auditRowOf(e: UsageEvent): AuditRow {
  const { id: _id, account_id: _account, ts, billed: _billed, balance_after: _after, ...facts } = e;
  return { timestamp: new Date(ts).toISOString(), ...facts };
}

function ledgerRowOf(e: UsageEvent): LedgerEntry {
  const tokens = e.prompt_tokens + e.completion_tokens;
  return {
    id: e.id.replace(/^evt_/, "txn_"),
    type: "usage_debit",
    amount: -e.cost,
    balance_after: e.balance_after ?? 0n,
    created_at: new Date(e.ts).toISOString(),
    description: `${e.provider}/${e.model}, ${tokens} tokens`,
    reference: e.request_id,
  };
}

/** Does this event carry a ledger row? Only when money moved. */
export const debits = (e: UsageEvent) => e.cost !== 0n && e.balance_after !== null;

/**
 * Turns outbox entries into their audit row, ledger row and rollup counters. Each atomic checks
 * that its entries are still in the outbox and deletes them, so a duplicate or late delivery, or
 * two processes racing on one entry, records it exactly once. Returns how many it recorded.
 */
export async function recordEvents(kv: Deno.Kv, ids: readonly string[]): Promise<number> {
  let recorded = 0;
  let pending = [...new Set(ids)];
  for (let attempt = 0; pending.length > 0; attempt++) {
    const entries = (await getAll<UsageEvent>(kv, pending.map((id) => outboxKey(id))))
      .filter((e): e is Deno.KvEntry<UsageEvent> => e.value !== null);
    const conflicted: string[] = [];
    let i = 0;
    while (i < entries.length) {
      const atomic = kv.atomic();
      const sums = new Map<string, [Deno.KvKey, bigint]>();
      const group: Deno.KvEntry<UsageEvent>[] = [];
      let mutations = 0;
      let keyTotal = 0;
      for (; i < entries.length && group.length < MAX_CHECKS; i++) {
        const e = entries[i].value;
        const own = new Map<string, [Deno.KvKey, bigint]>();
        if (e.billed) addRollupSums(own, e);
        let added = 4;
        // The outbox key is both checked and deleted; audit, audit id and ledger rows are set.
        let bytes = 2 * keyBytes(entries[i].key) +
          keyBytes(auditKey(e.account_id, e.ts, e.request_id)) +
          keyBytes(auditIdKey(e.account_id, e.request_id)) +
          keyBytes(ledgerKey(e.account_id, e.ts, e.id));
        for (const [s, [key]] of own) {
          if (sums.has(s)) continue;
          added++;
          bytes += keyBytes(key);
        }
        if (
          group.length > 0 &&
          (mutations + added > MAX_MUTATIONS || keyTotal + bytes > MAX_KEY_BYTES)
        ) break;
        mutations += added;
        keyTotal += bytes;
        for (const [s, [key, amount]] of own) {
          const prev = sums.get(s);
          if (prev) prev[1] += amount;
          else sums.set(s, [key, amount]);
        }
        group.push(entries[i]);
      }
      for (const entry of group) {
        const e = entry.value;
        atomic.check(entry).delete(entry.key);
        atomic.set(auditKey(e.account_id, e.ts, e.request_id), auditRowOf(e));
        atomic.set(auditIdKey(e.account_id, e.request_id), e.ts);
        if (debits(e)) {
          atomic.set(ledgerKey(e.account_id, e.ts, ledgerRowOf(e).id), ledgerRowOf(e));
        }
      }
      for (const [key, amount] of sums.values()) atomic.sum(key, amount);
      let res: Deno.KvCommitResult | Deno.KvCommitError;
      try {
        res = await atomic.commit();
      } catch (e) {
        // Another process holds the KV file's write lock: like a conflict, try again.
        if (!isLocked(e)) throw e;
        res = { ok: false };
      }
      if (res.ok) recorded += group.length;
      else conflicted.push(...group.map((g) => g.value.id));
    }
    pending = conflicted;
    if (pending.length) await sleep(Math.min(100, 2 ** attempt));
  }
  return recorded;
}

/** Outbox entries older than `ms`: those whose delivery was lost (a crash) or never sent. */
export async function listStaleOutbox(kv: Deno.Kv, beforeMs: number, limit = 1000) {
  const ids: string[] = [];
  const iter = kv.list<UsageEvent>({
    prefix: OUTBOX_PREFIX,
    end: outboxKey(idFloor("evt", beforeMs)),
  }, { limit });
  for await (const e of iter) ids.push(e.value.id);
  return ids;
}

/** Counts outbox entries not yet recorded, with their debits per account. */
export async function pendingOutbox(kv: Deno.Kv) {
  let count = 0;
  const debitsByAccount = new Map<string, bigint>();
  for await (const e of kv.list<UsageEvent>({ prefix: OUTBOX_PREFIX })) {
    count++;
    if (debits(e.value)) {
      const a = e.value.account_id;
      debitsByAccount.set(a, (debitsByAccount.get(a) ?? 0n) + e.value.cost);
    }
  }
  return { count, debitsByAccount };
}
