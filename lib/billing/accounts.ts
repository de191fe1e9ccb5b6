import { newId } from "../ids.ts";
import { accountKey, balanceKey, HOLD_PREFIX } from "../kv/schema.ts";
import { commitRetrying, getAll } from "../kv/util.ts";
import { createKey } from "../auth/keys.ts";
import { pendingOutbox } from "../audit/recorder.ts";
import {
  type Account,
  type BalanceState,
  EMPTY_BALANCE,
  type Hold,
  type LedgerEntry,
} from "./types.ts";

/**
 * Creates an account, its balance record and its first management key in one atomic; `extra`
 * adds more to that atomic (an idempotency record).
 */
export async function createAccount(
  kv: Deno.Kv,
  spec: { name: string; email: string | null },
  extra?: (atomic: Deno.AtomicOperation, result: { account: Account; secret: string }) => void,
): Promise<{ account: Account; secret: string } | null> {
  const account: Account = {
    id: newId("acct"),
    name: spec.name,
    email: spec.email,
    created_at: new Date().toISOString(),
  };
  const atomic = kv.atomic()
    .check({ key: accountKey(account.id), versionstamp: null })
    .set(accountKey(account.id), account)
    .set(balanceKey(account.id), EMPTY_BALANCE);
  const { secret } = await createKey(
    kv,
    account.id,
    { name: "Management", scope: "management" },
    atomic,
  );
  extra?.(atomic, { account, secret });
  const res = await commitRetrying(atomic);
  return res.ok ? { account, secret } : null;
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
  for await (const e of kv.list<Account>({ prefix: ["account"] })) accounts.push(e.value);
  const balances = await getAll<BalanceState>(kv, accounts.map((a) => balanceKey(a.id)));
  return accounts.map((account, i) => ({ account, balance: balances[i].value ?? EMPTY_BALANCE }));
}

export interface BooksDifference {
  account_id: string;
  balance: bigint;
  ledger_sum: bigint;
  reserved: bigint;
  holds_sum: bigint;
}

/**
 * Checks the books of every account: balance = Σ ledger − usage debits still in the outbox, and
 * reserved = Σ open holds.
 */
export async function verifyBooks(kv: Deno.Kv) {
  const { count, debitsByAccount } = await pendingOutbox(kv);
  const holds = new Map<string, bigint>();
  for await (const e of kv.list<Hold>({ prefix: HOLD_PREFIX })) {
    const a = String(e.key[1]);
    holds.set(a, (holds.get(a) ?? 0n) + e.value.amount);
  }
  const differences: BooksDifference[] = [];
  const accounts = await listAccounts(kv);
  for (const { account, balance } of accounts) {
    let ledger = 0n;
    for await (const e of kv.list<LedgerEntry>({ prefix: ["ledger", account.id] })) {
      ledger += e.value.amount;
    }
    const ledgerSum = ledger - (debitsByAccount.get(account.id) ?? 0n);
    const holdsSum = holds.get(account.id) ?? 0n;
    if (ledgerSum !== balance.balance || holdsSum !== balance.reserved) {
      differences.push({
        account_id: account.id,
        balance: balance.balance,
        ledger_sum: ledgerSum,
        reserved: balance.reserved,
        holds_sum: holdsSum,
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
