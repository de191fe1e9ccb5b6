/**
 * Monthly statements, read from the ledger itself so that they reconcile to it by construction:
 * the opening balance is Σ ledger before the UTC month, every row of the month is in exactly one
 * line, and the closing balance is the opening plus the lines. The closing balance of a month no
 * row can still land in is cached, so a statement reads its own month and not the whole history.
 */
import {
  ledgerKey,
  ledgerRange,
  monthOfStatementClose,
  statementCloseKey,
  statementClosesBefore,
} from "../kv/schema.ts";
import { listStaleOutbox, usageTarget } from "../audit/recorder.ts";
import { monthOf } from "./periods.ts";
import type { LedgerEntry } from "./types.ts";

/** Usage of one provider's model in the month; amounts signed as the ledger's debits. */
export interface StatementLine {
  provider: string;
  model: string;
  requests: number;
  cost: bigint;
  market_cost: bigint;
}

export interface Statement {
  month: string;
  opening_balance: bigint;
  purchases: bigint;
  usage: { total: bigint; by_model: StatementLine[] };
  adjustments: bigint;
  refunds: bigint;
  closing_balance: bigint;
}

/**
 * A month is closed this long after its end, once no usage event of it waits in the outbox: a
 * usage event carries the time it was settled, and is in the outbox moments later.
 */
const CLOSE_AFTER_MS = 86_400_000;

/** The UTC month "2026-11" as [start, end) epoch ms, or null when it is not such a month. */
export function monthRange(month: string): [number, number] | null {
  const m = /^(\d{4})-(0[1-9]|1[0-2])$/.exec(month);
  if (!m) return null;
  // setUTCFullYear, not Date.UTC: that reads years below 100 as 19xx.
  const at = (y: number, mo: number) => new Date(0).setUTCFullYear(y, mo, 1);
  const [y, mo] = [Number(m[1]), Number(m[2]) - 1];
  return [at(y, mo), at(y, mo + 1)];
}

/** The months from `fromMs`'s to `toMs`'s, newest first, at most `max`. */
export function monthsBetween(fromMs: number, toMs: number, max: number): string[] {
  const out: string[] = [];
  const first = monthOf(fromMs);
  for (let m = monthOf(toMs); out.length < max; m = monthOf(monthRange(m)![0] - 1)) {
    out.push(m);
    if (m <= first) break;
  }
  return out;
}

/** Whether no ledger row can still land before `endMs`. */
async function closedBefore(kv: Deno.Kv, endMs: number, now: number): Promise<boolean> {
  return now >= endMs + CLOSE_AFTER_MS && (await listStaleOutbox(kv, endMs, 1)).length === 0;
}

/**
 * Σ ledger of the account before `startMs` (the start of `month`), from the latest cached month;
 * `begun` when the account has a ledger row before it (months before the first row are not kept).
 */
async function balanceBefore(
  kv: Deno.Kv,
  accountId: string,
  month: string,
  startMs: number,
  now: number,
): Promise<{ sum: bigint; begun: boolean }> {
  let sum = 0n;
  let fromMs: number | null = null;
  const cached = kv.list<bigint>(statementClosesBefore(accountId, month), {
    reverse: true,
    limit: 1,
  });
  for await (const e of cached) {
    sum = e.value;
    fromMs = monthRange(monthOfStatementClose(e.key))![1];
  }
  let begun = fromMs !== null;
  if (fromMs === startMs) return { sum, begun };
  const rows = kv.list<LedgerEntry>(ledgerRange(accountId, fromMs, startMs), { batchSize: 1000 });
  for await (const e of rows) {
    sum += e.value.amount;
    begun = true;
  }
  if (begun && await closedBefore(kv, startMs, now)) {
    await kv.set(statementCloseKey(accountId, monthOf(startMs - 1)), sum);
  }
  return { sum, begun };
}

/**
 * The account's statement of `month` ("2026-11", as `monthRange` takes it) as of `now`: the
 * current month is the month so far.
 */
export async function monthStatement(
  kv: Deno.Kv,
  accountId: string,
  month: string,
  now: number,
): Promise<Statement> {
  const [startMs, endMs] = monthRange(month)!;
  const { sum: opening, begun } = await balanceBefore(kv, accountId, month, startMs, now);
  const s: Statement = {
    month,
    opening_balance: opening,
    purchases: 0n,
    usage: { total: 0n, by_model: [] },
    adjustments: 0n,
    refunds: 0n,
    closing_balance: opening,
  };
  const lines = new Map<string, StatementLine>();
  const rows = kv.list<LedgerEntry>({
    start: ledgerKey(accountId, startMs, ""),
    end: ledgerKey(accountId, endMs, ""),
  }, { batchSize: 1000 });
  let rowsSeen = false;
  for await (const { value: e } of rows) {
    rowsSeen = true;
    s.closing_balance += e.amount;
    switch (e.type) {
      case "purchase":
        s.purchases += e.amount;
        break;
      case "adjustment":
        s.adjustments += e.amount;
        break;
      case "refund":
        s.refunds += e.amount;
        break;
      case "usage_debit": {
        s.usage.total += e.amount;
        const { provider, model } = usageTarget(e.description) ??
          { provider: "", model: e.description };
        const k = `${provider}\u0000${model}`;
        let line = lines.get(k);
        if (!line) {
          line = { provider, model, requests: 0, cost: 0n, market_cost: 0n };
          lines.set(k, line);
        }
        line.requests++;
        line.cost += e.amount;
        // Rows recorded before market costs were kept count at their cost.
        line.market_cost -= e.market_cost ?? -e.amount;
        break;
      }
    }
  }
  s.usage.by_model = [...lines.values()].sort((a, b) =>
    a.provider < b.provider ? -1 : a.provider > b.provider ? 1 : a.model < b.model ? -1 : 1
  );
  if ((begun || rowsSeen) && await closedBefore(kv, endMs, now)) {
    await kv.set(statementCloseKey(accountId, month), s.closing_balance);
  }
  return s;
}
