/**
 * Per-account running totals of the ledger: two `Deno.KvU64` counters (credits, debits) added to
 * with `sum` in the atomic that writes each ledger row, so concurrent writers never conflict on
 * them and the books check reads two counters instead of every row of an account.
 */
import { ledgerPrefix, ledgerTotalKey, ledgerTotalsCompleteKey } from "../kv/schema.ts";
import { commitRetrying, getAll, keyBytes } from "../kv/util.ts";
import type { LedgerEntry } from "./types.ts";

const U64 = 1n << 64n;
// A back-fill re-sums the account when a row was written meanwhile; this many in a row means the
// account never paused, so the migration stops and says so rather than spin.
const MAX_BACKFILL_ATTEMPTS = 20;

/**
 * Adds a ledger row's amount (signed) to its account's totals, in the atomic writing the row: a
 * credit to "credit", a debit (negated) to "debit". Modulo 2^64, as `sum` wraps: an amount beyond
 * that (no real account's) makes the totals disagree with the balance, and the books check then
 * sums the rows themselves.
 */
export function countLedger(
  atomic: Deno.AtomicOperation,
  accountId: string,
  amount: bigint,
): Deno.AtomicOperation {
  const total = ledgerTotalSum(accountId, amount);
  return total ? atomic.sum(total.key, total.value) : atomic;
}

/** The `sum` `countLedger` adds for a row of `amount`, as data (null for a zero amount). */
export function ledgerTotalSum(
  accountId: string,
  amount: bigint,
): { key: Deno.KvKey; value: bigint } | null {
  if (amount === 0n) return null;
  const side = amount > 0n ? "credit" : "debit";
  return { key: ledgerTotalKey(accountId, side), value: (amount < 0n ? -amount : amount) % U64 };
}

/** An upper bound of the key bytes `countLedger` adds to an atomic (one `sum`). */
export const ledgerTotalKeyBytes = (accountId: string) =>
  keyBytes(ledgerTotalKey(accountId, "credit"));

const u64 = (e: Deno.KvEntryMaybe<unknown>) => e.value instanceof Deno.KvU64 ? e.value.value : 0n;

/**
 * Each account's ledger sum from its totals (credits − debits), or null for an account whose totals
 * do not cover every row (no "complete" mark: written before the totals and not back-filled).
 */
export async function ledgerTotals(
  kv: Deno.Kv,
  accountIds: readonly string[],
): Promise<(bigint | null)[]> {
  const entries = await getAll<unknown>(
    kv,
    accountIds.flatMap((id) => [
      ledgerTotalsCompleteKey(id),
      ledgerTotalKey(id, "credit"),
      ledgerTotalKey(id, "debit"),
    ]),
  );
  return accountIds.map((_, i) => {
    const [mark, credit, debit] = entries.slice(3 * i, 3 * i + 3);
    return mark.value === null ? null : u64(credit) - u64(debit);
  });
}

/** Σ amounts of an account's ledger rows, read row by row. */
export async function sumLedger(kv: Deno.Kv, accountId: string): Promise<bigint> {
  let sum = 0n;
  for await (const e of kv.list<LedgerEntry>({ prefix: ledgerPrefix(accountId) })) {
    sum += e.value.amount;
  }
  return sum;
}

/**
 * Sets the totals of an account written before them to the sum of its rows, with the "complete"
 * mark, in one atomic that checks neither total nor the mark changed since before the rows were
 * read: every writer of a row also adds to a total, so a row written meanwhile fails the commit and
 * the rows are summed again. Returns false when the account's totals were complete already.
 */
export async function backfillLedgerTotals(
  kv: Deno.Kv,
  accountId: string,
  now: number,
): Promise<boolean> {
  const keys = [
    ledgerTotalsCompleteKey(accountId),
    ledgerTotalKey(accountId, "credit"),
    ledgerTotalKey(accountId, "debit"),
  ] as const;
  for (let attempt = 0; attempt < MAX_BACKFILL_ATTEMPTS; attempt++) {
    const [mark, credit, debit] = await kv.getMany<unknown[]>([...keys]);
    if (mark.value !== null) return false;
    let credits = 0n, debits = 0n;
    for await (
      const e of kv.list<LedgerEntry>({ prefix: ledgerPrefix(accountId) })
    ) {
      if (e.value.amount > 0n) credits += e.value.amount;
      else debits -= e.value.amount;
    }
    const res = await commitRetrying(
      kv.atomic().check(mark, credit, debit)
        .set(keys[1], new Deno.KvU64(credits % U64))
        .set(keys[2], new Deno.KvU64(debits % U64))
        .set(keys[0], now),
    );
    if (res.ok) return true;
  }
  throw new Error(
    `ledger totals of ${accountId}: rows were written during each of ${MAX_BACKFILL_ATTEMPTS} back-fills`,
  );
}
