import {
  ACCOUNT_PREFIX,
  accountKey,
  balanceKey,
  HOLD_PREFIX,
  ledgerTotalsCompleteKey,
} from "../kv/schema.ts";
import { getAll } from "../kv/util.ts";
import { pendingOutbox } from "../audit/recorder.ts";
import { ledgerTotals, sumLedger } from "./totals.ts";
import { type Account, type BalanceState, EMPTY_BALANCE, type Hold } from "./types.ts";

/**
 * Adds a new account's records to `atomic`: the account (checked absent), its empty balance and
 * ledger totals complete from `now`. Onboarding (lib/onboarding.ts) adds its first key.
 *
 * @example
 * ```ts
 * const account = { id: newId("acct"), name: "Acme", email: null, created_at: iso };
 * writeNewAccount(kv.atomic(), account, now);
 * ```
 */
export function writeNewAccount(atomic: Deno.AtomicOperation, account: Account, now: number) {
  atomic.check({ key: accountKey(account.id), versionstamp: null })
    .set(accountKey(account.id), account)
    .set(balanceKey(account.id), EMPTY_BALANCE)
    // No ledger row yet: its totals (none, read as 0) count every row from the start.
    .set(ledgerTotalsCompleteKey(account.id), now);
}

export async function getAccount(kv: Deno.Kv, id: string): Promise<Account | null> {
  return (await kv.get<Account>(accountKey(id))).value;
}

export async function getBalance(kv: Deno.Kv, accountId: string): Promise<BalanceState> {
  return (await kv.get<BalanceState>(balanceKey(accountId))).value ?? EMPTY_BALANCE;
}

export async function listAccounts(
  kv: Deno.Kv,
): Promise<{ account: Account; balance: BalanceState }[]> {
  const accounts: Account[] = [];
  for await (const e of kv.list<Account>({ prefix: ACCOUNT_PREFIX })) accounts.push(e.value);
  const balances = await getAll<BalanceState>(kv, accounts.map((a) => balanceKey(a.id)));
  return accounts.map((account, i) => ({ account, balance: balances[i].value ?? EMPTY_BALANCE }));
}

export interface BooksDifference {
  account_id: string;
  balance: bigint;
  ledger_sum: bigint;
  reserved: bigint;
  holds_sum: bigint;
  /** With `scan`: the account's ledger totals when they disagree with its rows. */
  ledger_totals?: bigint;
}

/**
 * Checks the books of every account: balance = Σ ledger − usage debits still in the outbox, and
 * reserved = Σ open holds. Σ ledger is read from the account's running totals (lib/billing/
 * totals.ts); its rows are summed instead for an account without complete totals, and for one whose
 * totals disagree with its balance, so only the rows can fail the check. With `scan`, every
 * account's rows are summed, and totals that disagree with them are a difference too.
 */
export async function verifyBooks(kv: Deno.Kv, opts: { scan?: boolean } = {}) {
  const { count, debitsByAccount } = await pendingOutbox(kv);
  const holds = new Map<string, bigint>();
  for await (const e of kv.list<Hold>({ prefix: HOLD_PREFIX })) {
    const a = String(e.key[1]);
    holds.set(a, (holds.get(a) ?? 0n) + e.value.amount);
  }
  const differences: BooksDifference[] = [];
  const accounts = await listAccounts(kv);
  const totals = await ledgerTotals(kv, accounts.map((a) => a.account.id));
  for (const [i, { account, balance }] of accounts.entries()) {
    const pending = debitsByAccount.get(account.id) ?? 0n;
    const total = totals[i];
    let ledger = total;
    if (ledger === null || opts.scan || ledger - pending !== balance.balance) {
      ledger = await sumLedger(kv, account.id);
    }
    const ledgerSum = ledger - pending;
    const holdsSum = holds.get(account.id) ?? 0n;
    const drift = opts.scan && total !== null && total !== ledger;
    if (ledgerSum !== balance.balance || holdsSum !== balance.reserved || drift) {
      differences.push({
        account_id: account.id,
        balance: balance.balance,
        ledger_sum: ledgerSum,
        reserved: balance.reserved,
        holds_sum: holdsSum,
        ...(drift ? { ledger_totals: total } : {}),
      });
    }
  }
  return {
    ok: differences.length === 0,
    accounts_checked: accounts.length,
    pending_events: count,
    differences,
  };
}
