import assert from "node:assert/strict";
import type { ApiKey, UsageEvent } from "../lib/billing/types.ts";
import { newId } from "../lib/ids.ts";
import { AccountActors } from "../lib/billing/actor.ts";
import type { TestRouter } from "./_helpers.ts";

/**
 * A billed usage event of one chat request (openai/gpt-4o-mini, 1 prompt and 1 completion token,
 * cost 5 nano-USD, market 6) with a fresh id at `ts`; `fields` overrides any part.
 */
export function usageEvent(fields: Partial<UsageEvent> = {}): UsageEvent {
  const ts = fields.ts ?? Date.now();
  return {
    id: newId("evt", ts),
    account_id: "acct_test",
    ts,
    request_id: newId("req", ts),
    key_id: "key_a",
    key_name: "a",
    provider: "openai",
    model: "gpt-4o-mini",
    prompt_tokens: 1,
    completion_tokens: 1,
    cached_tokens: 0,
    cache_write_tokens: 0,
    reasoning_tokens: 0,
    cost: 5n,
    market_cost: 6n,
    latency_ms: 1,
    status: 200,
    streaming: false,
    client_ip: "",
    user_agent: "",
    billed: true,
    balance_after: 0n,
    error_code: null,
    ...fields,
  };
}

let seq = 0;

/**
 * A billed usage event whose ids and token figures differ from every other one made here, with
 * cost 1000 + 7·n nano-USD (or `fields.cost`) and a market cost a quarter above it.
 */
export function distinctEvent(fields: Partial<UsageEvent> = {}): UsageEvent {
  seq++;
  const cost = fields.cost ?? BigInt(1000 + 7 * seq);
  return usageEvent({
    id: `evt_${String(seq).padStart(8, "0")}`,
    request_id: `req_${seq}`,
    prompt_tokens: 100 + seq,
    completion_tokens: 10 + seq,
    cached_tokens: seq % 3,
    cache_write_tokens: seq % 2,
    reasoning_tokens: seq % 5,
    cost,
    market_cost: cost + cost / 4n,
    latency_ms: 5,
    balance_after: 1_000_000_000n - cost,
    ...fields,
  });
}

/**
 * Settles one request per entry of `variants` on a new account of `t`, through an actor of its
 * own that records nothing (what a process killed right after its settling commits leaves): the
 * events wait in the outbox. Each variant overrides fields of its event, which costs `cost`.
 */
export async function settledUnrecorded(
  t: TestRouter,
  variants: Partial<UsageEvent>[],
  cost = 192_000n,
) {
  const acct = await t.account("1");
  const key = (await t.router.svc.keys.resolve(acct.key))!;
  const actors = new AccountActors(t.kv, { delivery: "drainer" });
  const ids: string[] = [];
  for (const fields of variants) {
    const holdId = newId("hold");
    const r = await actors.submit(acct.id, {
      kind: "reserve",
      keyId: key.id,
      holdId,
      amount: 1_000_000n,
      ttlMs: 60_000,
    });
    assert.deepEqual(r, { ok: true });
    const event = usageEvent({
      account_id: acct.id,
      key_id: key.id,
      key_name: key.name,
      cost,
      balance_after: null,
      ...fields,
    });
    await actors.submit(acct.id, { kind: "settle", keyId: key.id, holdId, cost, event });
    ids.push(event.id);
  }
  return { ...acct, ids, actors };
}

/** An inference key record of `accountId` (no limits), `fields` overriding any part. */
export function apiKeyRecord(id: string, accountId: string, fields: Partial<ApiKey> = {}): ApiKey {
  return {
    id,
    account_id: accountId,
    name: id,
    scope: "inference",
    prefix: "er-x",
    hash: "h",
    created_at: "2027-01-01T00:00:00Z",
    disabled: false,
    revoked_at: null,
    credit_limit: null,
    limit_reset: null,
    expires_at: null,
    rate_limit_rpm: null,
    ...fields,
  };
}

/**
 * `kv` with every atomic's commit going through `onCommit`, told the first part of every key the
 * atomic sets or deletes: a test holds a commit back, or fails it, by what it writes.
 */
export function interceptCommits(
  kv: Deno.Kv,
  onCommit: (
    prefixes: Set<unknown>,
    commit: () => Promise<Deno.KvCommitResult | Deno.KvCommitError>,
  ) => Promise<Deno.KvCommitResult | Deno.KvCommitError>,
): Deno.Kv {
  const bind = <T extends object>(o: T, p: string | symbol) => {
    const v = Reflect.get(o, p, o);
    return typeof v === "function" ? v.bind(o) : v;
  };
  return new Proxy(kv, {
    get(target, p) {
      if (p !== "atomic") return bind(target, p);
      return () => {
        const op = target.atomic();
        const prefixes = new Set<unknown>();
        const wrapped: Deno.AtomicOperation = new Proxy(op, {
          get(o, q) {
            if (q === "set" || q === "delete") {
              return (key: Deno.KvKey, ...rest: unknown[]) => {
                prefixes.add(key[0]);
                (o[q] as (...a: unknown[]) => unknown)(key, ...rest);
                return wrapped;
              };
            }
            if (q === "commit") return () => onCommit(prefixes, () => o.commit());
            return bind(o, q);
          },
        });
        return wrapped;
      };
    },
  });
}
