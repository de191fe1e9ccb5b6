import assert from "node:assert/strict";
import { AccountActors } from "../../../lib/billing/actor.ts";
import { apiKeyKey, balanceKey, OUTBOX_PREFIX } from "../../../lib/kv/schema.ts";
import type { BalanceState, UsageEvent } from "../../../lib/billing/types.ts";
import { apiKeyRecord, usageEvent } from "../../_fixtures.ts";

/** An unbilled event (a refused request) of the account, with a user agent of `uaBytes`. */
function event(accountId: string, uaBytes = 10): UsageEvent {
  const now = Date.now();
  return usageEvent({
    account_id: accountId,
    ts: now,
    key_id: "key_none",
    key_name: "k",
    prompt_tokens: 0,
    completion_tokens: 0,
    cost: 0n,
    market_cost: 0n,
    status: 402,
    client_ip: "127.0.0.1",
    user_agent: "u".repeat(uaBytes),
    billed: false,
    balance_after: null,
    error_code: "insufficient_credits",
  });
}

/** Runs `fn` against a fresh in-memory KV. */
async function withActors(fn: (kv: Deno.Kv) => Promise<void>) {
  const kv = await Deno.openKv(":memory:");
  try {
    await fn(kv);
  } finally {
    kv.close();
  }
}

Deno.test("operations of many accounts submitted together commit in one atomic", async () => {
  await withActors(async (kv) => {
    const commits: string[][] = [];
    const actors = new AccountActors(kv, {
      delivery: "drainer",
      onCommitted: (ids) => commits.push(ids),
    });
    const accounts = Array.from({ length: 50 }, (_, i) => `acct_many_${i}`);
    await Promise.all(accounts.map((a) => actors.submit(a, { kind: "record", event: event(a) })));
    assert.equal(commits.length, 1, "one commit for 50 accounts");
    assert.equal(commits[0].length, 50);
    const stamps = new Set(
      (await kv.getMany(accounts.slice(0, 10).map((a) => balanceKey(a)))).map((e) =>
        e.versionstamp
      ),
    );
    assert.equal(stamps.size, 1, "the balances share one versionstamp");
    await actors.idle();
  });
});

Deno.test("atomics stay within Deno KV's size limits: large events of many accounts all commit, several per atomic", async () => {
  await withActors(async (kv) => {
    const commits: string[][] = [];
    const actors = new AccountActors(kv, {
      delivery: "queue",
      onCommitted: (ids) => commits.push(ids),
    });
    // 300 events of about 6 KB: 1.8 MB in all, beyond one atomic's 800 KiB.
    const accounts = Array.from({ length: 300 }, (_, i) => `acct_big_${i}`);
    await Promise.all(
      accounts.map((a) => actors.submit(a, { kind: "record", event: event(a, 6000) })),
    );
    const ids = commits.flat();
    assert.equal(ids.length, 300, "every event committed");
    assert.ok(commits.length >= 3, `split into several atomics (${commits.length})`);
    assert.ok(commits.length <= 30, `not one atomic per account (${commits.length})`);
    const outbox = await Array.fromAsync(kv.list({ prefix: OUTBOX_PREFIX }));
    assert.equal(outbox.length, 300);
    await actors.idle();
  });
});

Deno.test("an operation that fails does not fail other accounts' operations in the same atomic", async () => {
  await withActors(async (kv) => {
    const actors = new AccountActors(kv, { delivery: "drainer" });
    const accounts = Array.from({ length: 10 }, (_, i) => `acct_iso_${i}`);
    const outcomes = await Promise.allSettled(accounts.map((a, i) =>
      actors.submit(a, {
        kind: "credit",
        type: "adjustment",
        amount: 1000n,
        description: "grant",
        reference: null,
        once: {
          key: ["test_once", a],
          value: () => {
            if (i === 3) throw new Error("refused value");
            return "done";
          },
        },
      })
    ));
    outcomes.forEach((o, i) =>
      assert.equal(o.status, i === 3 ? "rejected" : "fulfilled", `account ${i}`)
    );
    for (const [i, a] of accounts.entries()) {
      const bal = (await kv.get<BalanceState>(balanceKey(a))).value;
      assert.equal(bal?.balance ?? 0n, i === 3 ? 0n : 1000n, `balance of account ${i}`);
    }
    await actors.idle();
  });
});

Deno.test("a batch decided on cached state is decided again when another writer changed it", async () => {
  await withActors(async (kv) => {
    const a = new AccountActors(kv, { delivery: "drainer" });
    const b = new AccountActors(kv, { delivery: "drainer" });
    const acct = "acct_cache";
    await kv.set(apiKeyKey("key_cache"), apiKeyRecord("key_cache", acct));
    const reserve = (holdId: string, amount: bigint) =>
      a.submit(acct, { kind: "reserve", keyId: "key_cache", holdId, amount, ttlMs: 60_000 });
    const credit = (actors: AccountActors, amount: bigint) =>
      actors.submit(acct, {
        kind: "credit",
        type: "adjustment",
        amount,
        description: "",
        reference: null,
      });

    await credit(a, 100n);
    assert.deepEqual(await reserve("hold_1", 150n), {
      ok: false,
      code: "insufficient_credits",
      available: 100n,
    });
    // Another process credits the account: the first actor's cached balance is stale.
    await credit(b, 100n);
    assert.deepEqual(await reserve("hold_2", 150n), { ok: true });
    assert.equal((await kv.get<BalanceState>(balanceKey(acct))).value?.reserved, 150n);

    // The key is revoked behind the actor's back: the next reserve sees it.
    await kv.set(apiKeyKey("key_cache"), {
      ...apiKeyRecord("key_cache", acct),
      revoked_at: "2026-01-01T00:00:00Z",
    });
    assert.deepEqual(await reserve("hold_3", 10n), { ok: false, code: "invalid_api_key" });

    // Its own cached hold is settled exactly: the reserve is returned, the cost debited.
    const settled = await a.submit(acct, {
      kind: "settle",
      keyId: "key_cache",
      holdId: "hold_2",
      cost: 40n,
      event: { ...event(acct), billed: true },
    });
    assert.deepEqual(settled, { balanceAfter: 160n, charged: 40n });
    const bal = (await kv.get<BalanceState>(balanceKey(acct))).value!;
    assert.equal(bal.reserved, 0n);
    assert.equal(bal.balance, 160n);
    await a.idle();
    await b.idle();
  });
});
