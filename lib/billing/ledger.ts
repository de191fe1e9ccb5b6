import type { LedgerEntry, LedgerType } from "./types.ts";
import { formatUsd } from "../money.ts";
import { page } from "../kv/util.ts";
import { badRequest } from "../http/errors.ts";

/** A page of an account's ledger, newest first, optionally of one type. */
export async function listLedgerByAccount(
  kv: Deno.Kv,
  accountId: string,
  opts: { type?: LedgerType; limit: number; cursor?: string },
): Promise<{ data: LedgerEntry[]; next_cursor: string | null }> {
  const iter = kv.list<LedgerEntry>({ prefix: ["ledger", accountId] }, {
    reverse: true,
    cursor: opts.cursor,
  });
  try {
    return await page(iter, opts.limit, (e) => !opts.type || e.type === opts.type ? e : null);
  } catch (e) {
    // Deno KV refuses a cursor it cannot decode only once the listing is read.
    if (opts.cursor && e instanceof TypeError && /invalid cursor/i.test(e.message)) {
      throw badRequest("Invalid 'cursor': not a cursor this endpoint returned");
    }
    throw e;
  }
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
  };
}
