/**
 * Balance leases, this process's upkeep, run every `tickMs` by `Background`: a lease idle for
 * `idleMs` is returned, one whose holds outlive half its TTL is renewed, and a recall (another
 * process refused a reserve while leases held the credit) makes this process give back all its
 * lease's holds do not need.
 */
import { balanceKey } from "../kv/schema.ts";
import { getAll } from "../kv/util.ts";
import type { AccountActors } from "./actor.ts";
import type { BalanceState } from "./types.ts";

export async function tickLeases(kv: Deno.Kv, actors: AccountActors): Promise<void> {
  const o = actors.leaseOptions;
  if (!o) return;
  const now = actors.now();
  const accounts = [...actors.leases.accounts()];
  const work: Promise<unknown>[] = [];
  const returning = new Set<string>();
  for (const acct of accounts) {
    const st = actors.leases.status(acct)!;
    if (st.holds === 0 && now - st.lastUse >= o.idleMs) {
      returning.add(acct);
      work.push(actors.submit(acct, { kind: "lease", action: "return" }));
    } else if (st.expiresMs - now < o.ttlMs / 2) {
      work.push(actors.submit(acct, { kind: "lease", action: "sync" }));
    }
  }
  // The balances of the accounts leased here, read (not checked): a recall is noticed within a
  // tick, and the next top-up decides on a fresh balance.
  const balances = await getAll<BalanceState>(kv, accounts.map((a) => balanceKey(a)));
  balances.forEach((e, i) => {
    const acct = accounts[i];
    actors.refresh(acct, e);
    const r = e.value?.recall_ms;
    const l = actors.leases.view(acct);
    if (r === undefined || now >= r + o.recallMs || returning.has(acct) || !l) return;
    if ((actors.leases.roomLeft(acct) ?? 0n) > 0n || l.holds.size === 0) {
      work.push(actors.submit(acct, { kind: "lease", action: "return" }));
    }
  });
  actors.leases.evictRates(now);
  await Promise.all(work);
}
