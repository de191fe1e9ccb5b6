import type { LedgerEntry, LedgerType } from "./types.ts";
import { rowCursor, rowCursorAt } from "../kv/util.ts";
import { ledgerKey, ledgerPrefix } from "../kv/schema.ts";
import { InvalidInput } from "../errors.ts";

/**
 * A page of an account's ledger, newest first, optionally of one type. The cursor names the last
 * entry seen (`rowCursor`); the next page starts strictly below it.
 *
 * @example
 * ```ts
 * const { data, next_cursor } = await listLedgerByAccount(kv, accountId, { limit: 100 });
 * ```
 */
export async function listLedgerByAccount(
  kv: Deno.Kv,
  accountId: string,
  opts: { type?: LedgerType; limit: number; cursor?: string },
): Promise<{ data: LedgerEntry[]; next_cursor: string | null }> {
  const prefix = ledgerPrefix(accountId);
  let selector: Deno.KvListSelector = { prefix };
  if (opts.cursor) {
    const at = rowCursorAt(opts.cursor);
    if (!at) throw new InvalidInput("Invalid 'cursor': not a cursor this endpoint returned");
    selector = { prefix, end: ledgerKey(accountId, at.ms, at.id) };
  }
  const data: LedgerEntry[] = [];
  let last: Deno.KvKey | null = null;
  for await (const e of kv.list<LedgerEntry>(selector, { reverse: true })) {
    if (opts.type && e.value.type !== opts.type) continue;
    if (data.length === opts.limit) return { data, next_cursor: rowCursor(last!) };
    data.push(e.value);
    last = e.key;
  }
  return { data, next_cursor: null };
}
