import {
  ACCOUNT_PREFIX,
  accountIdOfKey,
  accountKey,
  balanceKey,
  HOLD_PREFIX,
  KEY_SPEND_PREFIX,
  LEASE_PREFIX,
  ledgerTotalsCompleteKey,
} from "../kv/schema.ts";
import { getAll } from "../kv/util.ts";
import { pendingOutbox } from "../audit/recorder.ts";
import { ledgerTotals, sumLedger } from "./totals.ts";
import {
  type Account,
  type BalanceState,
  EMPTY_BALANCE,
  type Hold,
  type KeySpend,
  type Lease,
} from "./types.ts";
import { balanceViews, getBalanceView } from "./views.ts";

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

/**
 * An account by id, or null.
 *
 * @example
 * ```ts
 * const account = await getAccount(kv, "acct_01m9…"); // null when there is none
 * ```
 */
export async function getAccount(kv: Deno.Kv, id: string): Promise<Account | null> {
  return (await kv.get<Account>(accountKey(id))).value;
}

/**
 * The account's balance as customers see it (`GET /v1/credits`, the dashboard): its leases' debits
 * and holds counted in, so a lease changes none of the figures.
 *
 * @example
 * ```ts
 * const b = await getBalance(kv, accountId); // b.balance - b.reserved is available
 * ```
 */
export function getBalance(kv: Deno.Kv, accountId: string): Promise<BalanceState> {
  return getBalanceView(kv, accountId);
}

/**
 * Every account with its balance as customers see it.
 *
 * @example
 * ```ts
 * const all = await listAccounts(kv); // [{ account, balance }, …]
 * ```
 */
export async function listAccounts(
  kv: Deno.Kv,
): Promise<{ account: Account; balance: BalanceState }[]> {
  const accounts: Account[] = [];
  for await (const e of kv.list<Account>({ prefix: ACCOUNT_PREFIX })) accounts.push(e.value);
  const balances = await balanceViews(kv, accounts.map((a) => a.id));
  return accounts.map((account, i) => ({ account, balance: balances[i] }));
}

export interface BooksDifference {
  account_id: string;
  /** The true balance: the balance record less its leases' unfolded debits. */
  balance: bigint;
  ledger_sum: bigint;
  reserved: bigint;
  holds_sum: bigint;
  /** The balance record's `leased`, and Σ granted of the account's leases. */
  leased: bigint;
  leases_sum: bigint;
  /** Σ `leased` of the account's key spends, and Σ slices of its leases' keys. */
  keys_leased: bigint;
  slices_sum: bigint;
  /** With `scan`: the account's ledger totals when they disagree with its rows. */
  ledger_totals?: bigint;
}

const add = (m: Map<string, bigint>, k: string, v: bigint) => m.set(k, (m.get(k) ?? 0n) + v);

/**
 * Checks the books of every account, as of a quiet moment (the reads are not one snapshot): true
 * balance (balance − Σ its leases' unfolded debits) = Σ ledger − usage debits still in the outbox,
 * reserved = Σ open holds, leased = Σ its leases' credit, and its keys' leased = Σ their slices.
 * Σ ledger is read from the account's running totals (lib/billing/totals.ts); its rows are summed
 * instead for an account without complete totals, and for one whose totals disagree with its
 * balance, so only the rows can fail the check. With `scan`, every account's rows are summed, and
 * totals that disagree with them are a difference too.
 *
 * @example
 * ```ts
 * const v = await verifyBooks(kv);
 * if (!v.ok) console.log(v.differences);
 * ```
 */
export async function verifyBooks(kv: Deno.Kv, opts: { scan?: boolean } = {}) {
  const { count, debitsByAccount } = await pendingOutbox(kv);
  const holds = new Map<string, bigint>();
  for await (const e of kv.list<Hold>({ prefix: HOLD_PREFIX })) {
    add(holds, accountIdOfKey(e.key), e.value.amount);
  }
  const granted = new Map<string, bigint>(), spent = new Map<string, bigint>();
  const slices = new Map<string, bigint>();
  for await (const e of kv.list<Lease>({ prefix: LEASE_PREFIX })) {
    const a = accountIdOfKey(e.key);
    add(granted, a, e.value.granted);
    add(spent, a, e.value.spent);
    for (const k of Object.values(e.value.keys)) add(slices, a, k.slice ?? 0n);
  }
  const keysLeased = new Map<string, bigint>();
  for await (const e of kv.list<KeySpend>({ prefix: KEY_SPEND_PREFIX })) {
    add(keysLeased, accountIdOfKey(e.key), e.value.leased ?? 0n);
  }
  const differences: BooksDifference[] = [];
  const accounts: Account[] = [];
  for await (const e of kv.list<Account>({ prefix: ACCOUNT_PREFIX })) accounts.push(e.value);
  const ids = accounts.map((a) => a.id);
  const [balances, totals] = await Promise.all([
    getAll<BalanceState>(kv, ids.map((a) => balanceKey(a))),
    ledgerTotals(kv, ids),
  ]);
  for (const [i, a] of ids.entries()) {
    const b = balances[i].value ?? EMPTY_BALANCE;
    const pending = debitsByAccount.get(a) ?? 0n;
    const trueBalance = b.balance - (spent.get(a) ?? 0n);
    const total = totals[i];
    let ledger = total;
    if (ledger === null || opts.scan || ledger - pending !== trueBalance) {
      ledger = await sumLedger(kv, a);
    }
    const drift = opts.scan && total !== null && total !== ledger;
    const d: BooksDifference = {
      account_id: a,
      balance: trueBalance,
      ledger_sum: ledger - pending,
      reserved: b.reserved,
      holds_sum: holds.get(a) ?? 0n,
      leased: b.leased ?? 0n,
      leases_sum: granted.get(a) ?? 0n,
      keys_leased: keysLeased.get(a) ?? 0n,
      slices_sum: slices.get(a) ?? 0n,
      ...(drift ? { ledger_totals: total } : {}),
    };
    if (
      d.ledger_sum !== d.balance || d.holds_sum !== d.reserved || d.leased !== d.leases_sum ||
      d.keys_leased !== d.slices_sum || drift
    ) differences.push(d);
  }
  return {
    ok: differences.length === 0,
    accounts_checked: accounts.length,
    pending_events: count,
    differences,
  };
}
