/**
 * What customers see of accounts with balance leases open: the same figures as without (a lease
 * is an internal detail; see lib/billing/lease.ts). Each figure is read with the account's leases
 * as one moment: the entries, then the leases, then the entries again. A fold between them writes
 * the entries together with the lease, so unchanged entries (versionstamps) mean the leases were
 * read against them; otherwise the read is tried again.
 */
import { accountIdOfKey, balanceKey, LEASE_PREFIX, leasesPrefix } from "../kv/schema.ts";
import { getAll } from "../kv/util.ts";
import { balanceView } from "./lease.ts";
import { type BalanceState, EMPTY_BALANCE, type Lease } from "./types.ts";

const ATTEMPTS = 5;

const sameStamps = (a: Deno.KvEntryMaybe<unknown>[], b: Deno.KvEntryMaybe<unknown>[]) =>
  a.every((e, i) => e.versionstamp === b[i].versionstamp);

/** The account's leases (open ones: a handful, one per process serving it). */
export async function listLeases(kv: Deno.Kv, accountId: string): Promise<Lease[]> {
  const out: Lease[] = [];
  for await (const e of kv.list<Lease>({ prefix: leasesPrefix(accountId) })) out.push(e.value);
  return out;
}

/** The entries at `keys` and the account's leases, as of one moment. */
export async function readWithLeases<T>(
  kv: Deno.Kv,
  accountId: string,
  keys: readonly Deno.KvKey[],
): Promise<{ entries: Deno.KvEntryMaybe<T>[]; leases: Lease[] }> {
  let entries = await getAll<T>(kv, keys);
  for (let attempt = 1;; attempt++) {
    const leases = await listLeases(kv, accountId);
    const again = await getAll<T>(kv, keys);
    // Under a stream of folds (rare: one per lease top-up), the last read stands.
    if (sameStamps(entries, again) || attempt >= ATTEMPTS) return { entries: again, leases };
    entries = again;
  }
}

/** The balance customers see: every lease's debits and holds counted in. */
export async function getBalanceView(kv: Deno.Kv, accountId: string): Promise<BalanceState> {
  const { entries: [b], leases } = await readWithLeases<BalanceState>(kv, accountId, [
    balanceKey(accountId),
  ]);
  return balanceView(b.value ?? EMPTY_BALANCE, leases);
}

/** The balances customers see of many accounts: every open lease listed once. */
export async function balanceViews(
  kv: Deno.Kv,
  accountIds: readonly string[],
): Promise<BalanceState[]> {
  const keys = accountIds.map((id) => balanceKey(id));
  const before = await getAll<BalanceState>(kv, keys);
  const leases = new Map<string, Lease[]>();
  for await (const e of kv.list<Lease>({ prefix: LEASE_PREFIX })) {
    const id = accountIdOfKey(e.key);
    leases.set(id, [...leases.get(id) ?? [], e.value]);
  }
  const after = await getAll<BalanceState>(kv, keys);
  return await Promise.all(
    accountIds.map((id, i) =>
      sameStamps([before[i]], [after[i]])
        ? balanceView(after[i].value ?? EMPTY_BALANCE, leases.get(id) ?? [])
        : getBalanceView(kv, id)
    ),
  );
}
