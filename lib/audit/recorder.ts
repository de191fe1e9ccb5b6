import { auditIdKey, auditKey, ledgerKey, OUTBOX_PREFIX, outboxKey } from "../kv/schema.ts";
import { approxBytes, clip, getAll, isLocked, keyBytes, sleep } from "../kv/util.ts";
import { ATOMIC_LIMITS, AtomicRoom } from "../kv/limits.ts";
import { idFloor } from "../ids.ts";
import { encodeAuditRow } from "./row.ts";
import { notePending, pendingKeyBytes, PendingRollups, pendingRowBytes } from "../usage/compact.ts";
import { countLedger, ledgerTotalKeyBytes } from "../billing/totals.ts";
import {
  type AuditRow,
  type LedgerEntry,
  MAX_NAME_CHARS,
  MAX_USER_AGENT_CHARS,
  type UsageEvent,
} from "../billing/types.ts";

/**
 * The audit row of an event: its request facts, timed. Its free text is clipped (the router keeps
 * it shorter already), so that a row always fits one KV value whatever the outbox entry held: a
 * string of one-byte characters fits the entry at nearly twice the length its UTF-8 row can.
 */
export function auditRowOf(e: UsageEvent): AuditRow {
  const { id: _id, account_id: _account, ts, billed: _billed, balance_after: _after, ...facts } = e;
  return {
    timestamp: new Date(ts).toISOString(),
    ...facts,
    key_name: clip(facts.key_name, MAX_NAME_CHARS),
    provider: clip(facts.provider, MAX_NAME_CHARS),
    model: clip(facts.model, MAX_NAME_CHARS),
    client_ip: clip(facts.client_ip, 64),
    user_agent: clip(facts.user_agent, MAX_USER_AGENT_CHARS),
    error_code: facts.error_code === null ? null : clip(facts.error_code, 64),
  };
}

/** What the audit key of an event stores: its audit row, encoded (lib/audit/row.ts). */
export const auditBytesOf = (e: UsageEvent): Uint8Array => encodeAuditRow(auditRowOf(e));

/** The ledger row id of an event: its own id under the `txn_` prefix. */
const ledgerId = (e: UsageEvent) => e.id.startsWith("evt_") ? "txn_" + e.id.slice(4) : e.id;

function ledgerRowOf(e: UsageEvent): LedgerEntry {
  const tokens = e.prompt_tokens + e.completion_tokens;
  return {
    id: ledgerId(e),
    type: "usage_debit",
    amount: -e.cost,
    balance_after: e.balance_after ?? 0n,
    created_at: new Date(e.ts).toISOString(),
    description: `${clip(e.provider, MAX_NAME_CHARS)}/${
      clip(e.model, MAX_NAME_CHARS)
    }, ${tokens} tokens`,
    reference: e.request_id,
    market_cost: e.market_cost,
  };
}

/**
 * The provider and model of a usage debit, read back from its description (`ledgerRowOf`'s
 * "provider/model, N tokens": provider names never hold a slash), or null for another row.
 *
 * @example
 * ```ts
 * usageTarget("openai/gpt-4o-mini, 1200 tokens"); // { provider: "openai", model: "gpt-4o-mini" }
 * ```
 */
export function usageTarget(description: string): { provider: string; model: string } | null {
  const m = /^([^/]*)\/(.*), \d+ tokens$/s.exec(description);
  return m ? { provider: m[1], model: m[2] } : null;
}

/**
 * Some events could not be recorded: each failed in an atomic of its own, for a reason other than
 * a conflict (a key or value over KV's limits, a malformed entry). They stay in the outbox; every
 * other event was recorded.
 */
export class RecordError extends Error {
  override name = "RecordError";
  constructor(
    readonly recorded: number,
    readonly failed: string[],
    override readonly cause: unknown,
  ) {
    super(
      `${failed.length} outbox entries could not be recorded (${failed.slice(0, 5).join(", ")}): ${
        cause instanceof Error ? cause.message : String(cause)
      }`,
    );
  }
}

/**
 * Does this event carry a ledger row? Only when money moved.
 *
 * @example
 * ```ts
 * if (debits(event)) atomic.set(ledgerKey(event.account_id, event.ts, event.id), row);
 * ```
 */
export const debits = (e: UsageEvent) => e.cost !== 0n && e.balance_after !== null;

/**
 * Turns outbox entries into their audit row, ledger row and rollup counters. Each atomic checks
 * that its entries are still in the outbox and deletes them, so a duplicate or late delivery, or
 * two processes racing on one entry, records it exactly once. `known` holds entries as this process
 * committed them (with their versionstamps): they are not read again; a failed check re-reads them.
 * Returns how many it recorded. An atomic that fails for another reason than a conflict is tried
 * again one event per atomic, so that one bad entry holds back no other; the entries that fail
 * alone stay in the outbox and are reported by a `RecordError` once the rest are recorded.
 */
export async function recordEvents(
  kv: Deno.Kv,
  ids: readonly string[],
  known?: ReadonlyMap<string, Deno.KvEntry<UsageEvent>>,
): Promise<number> {
  let recorded = 0;
  const failed: string[] = [];
  let failure: unknown = null;
  let pending = [...new Set(ids)];
  for (let attempt = 0; pending.length > 0; attempt++) {
    const cached = attempt === 0 && known ? pending.map((id) => known.get(id)) : [];
    const toRead = attempt === 0 && known ? pending.filter((_, i) => !cached[i]) : pending;
    const read = toRead.length
      ? await getAll<UsageEvent>(kv, toRead.map((id) => outboxKey(id)))
      : [];
    const entries = [...cached, ...read]
      .filter((e): e is Deno.KvEntry<UsageEvent> => !!e && e.value !== null)
      // One account's events together: their rollup counters merge into one sum each.
      .sort((a, b) =>
        a.value.account_id < b.value.account_id
          ? -1
          : a.value.account_id > b.value.account_id
          ? 1
          : 0
      );
    const conflicted: string[] = [];
    let i = 0;
    // Entries before this index are tried one per atomic: their shared atomic failed.
    let aloneUntil = 0;
    while (i < entries.length) {
      const start = i;
      const atomic = kv.atomic();
      // One pending rollup entry per account of the atomic (lib/usage/compact.ts folds them).
      const rollups = new PendingRollups();
      // Σ debits of each account of the atomic: one `sum` on its ledger total.
      const debited = new Map<string, bigint>();
      const group: Deno.KvEntry<UsageEvent>[] = [];
      // Each event's audit, audit id and ledger keys and its audit row, made once for sizing and
      // for writing.
      const keys: [Deno.KvKey, Deno.KvKey, Deno.KvKey][] = [];
      const rows: Uint8Array[] = [];
      // Sizes counted are upper bounds (keyBytes, approxBytes). Events of many accounts bring up
      // to 96 rollup counters each, so key bytes often bind first.
      const room = new AtomicRoom();
      const most = i < aloneUntil ? 1 : ATOMIC_LIMITS.checks;
      try {
        for (; i < entries.length && group.length < most; i++) {
          const e = entries[i].value;
          // A billed event opens its account's pending rollup entry unless the atomic has one.
          const opens = e.billed && rollups.opensEntry(e);
          let added = 4;
          // The outbox key is both checked and deleted; audit, audit id and ledger rows are set.
          const k: [Deno.KvKey, Deno.KvKey, Deno.KvKey] = [
            auditKey(e.account_id, e.ts, e.request_id),
            auditIdKey(e.account_id, e.request_id),
            ledgerKey(e.account_id, e.ts, ledgerId(e)),
          ];
          let bytes = 2 * keyBytes(entries[i].key) + keyBytes(k[0]) + keyBytes(k[1]) +
            keyBytes(k[2]);
          if (opens) {
            added++;
            bytes += pendingKeyBytes(e.account_id);
          }
          if (debits(e) && !debited.has(e.account_id)) {
            added++;
            bytes += ledgerTotalKeyBytes(e.account_id);
          }
          // Values: the audit row (stored as its bytes, so counted exactly), the audit id's time, the
          // ledger row (smaller than the event), the counters.
          const row = auditBytesOf(e);
          const valueBytes = row.length + approxBytes(e.ts) + approxBytes(e) +
            (e.billed ? pendingRowBytes(e) : 0);
          const f = { checks: 1, mutations: added, keyBytes: bytes, bytes: bytes + valueBytes };
          if (group.length > 0 && !room.fits(f)) break;
          room.take(f);
          if (e.billed) rollups.add(e);
          if (debits(e)) debited.set(e.account_id, (debited.get(e.account_id) ?? 0n) + e.cost);
          group.push(entries[i]);
          keys.push(k);
          rows.push(row);
        }
        group.forEach((entry, j) => {
          const e = entry.value;
          const [audit, auditId, ledger] = keys[j];
          atomic.check(entry).delete(entry.key);
          atomic.set(audit, rows[j]);
          atomic.set(auditId, e.ts);
          if (debits(e)) atomic.set(ledger, ledgerRowOf(e));
        });
        for (const [account, cost] of debited) countLedger(atomic, account, -cost);
        const accounts = rollups.write(atomic);
        let res: Deno.KvCommitResult | Deno.KvCommitError;
        try {
          res = await atomic.commit();
        } catch (e) {
          // Another process holds the KV file's write lock: like a conflict, try again.
          if (!isLocked(e)) throw e;
          res = { ok: false };
        }
        if (res.ok) {
          recorded += group.length;
          notePending(kv, accounts);
        } else conflicted.push(...group.map((g) => g.value.id));
      } catch (e) {
        // Not a conflict: the same atomic would fail again. A shared atomic's events (and the one
        // being sized, if that threw) are tried again one per atomic; one that fails alone is left
        // in the outbox.
        if (most > 1) {
          aloneUntil = Math.min(entries.length, i + 1);
          i = start;
        } else {
          failed.push(entries[start].value.id);
          failure = e;
          i = start + 1;
        }
      }
    }
    pending = conflicted;
    if (pending.length) await sleep(Math.min(100, 2 ** attempt));
  }
  if (failed.length) throw new RecordError(recorded, failed, failure);
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
