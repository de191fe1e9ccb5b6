import type { LedgerEntry, LedgerType } from "./types.ts";
import { formatUsd } from "../money.ts";
import { pageNewestFirst } from "../kv/util.ts";

/** A page of an account's ledger, newest first, optionally of one type. */
export function listLedgerByAccount(
  kv: Deno.Kv,
  accountId: string,
  opts: { type?: LedgerType; limit: number; cursor?: string },
): Promise<{ data: LedgerEntry[]; next_cursor: string | null }> {
  return pageNewestFirst<LedgerEntry, LedgerEntry>(
    kv,
    { prefix: ["ledger", accountId] },
    opts,
    (e) => !opts.type || e.type === opts.type ? e : null,
  );
}

/** A ledger entry as the API shows it (money as decimal strings). */
export function ledgerJson(e: LedgerEntry) {
  return {
    id: e.id,
    type: e.type,
    amount: formatUsd(e.amount),
    balance_after: formatUsd(e.balance_after),
    created_at: e.created_at,
    description: e.description,
    reference: e.reference,
    // Stripe's receipt of a purchase, where one is known.
    ...(e.receipt_url ? { receipt_url: e.receipt_url } : {}),
  };
}
