/**
 * Several router processes (`main.ts` subprocesses) on one KV file, serving one account through
 * balance leases: the books stay exact under concurrency and crashes, the last cents are
 * spendable from any process, and leases go back when idle, at shutdown, and when their process
 * dies (once they expire).
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { ADMIN_TOKEN, json, until } from "../_helpers.ts";
import { type FakeOpenAI, startFakeOpenAI } from "../_fakes/openai.ts";
import { spawnRouter } from "../_main.ts";
import { parseUsd } from "../../lib/money.ts";
import { LEASE_PREFIX } from "../../lib/kv/schema.ts";
import type { Lease } from "../../lib/billing/types.ts";

type Router = Awaited<ReturnType<typeof spawnRouter>>;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const admin = async (url: string, method: string, path: string, body?: unknown) =>
  await fetch(url + path, {
    method,
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });

/** An account with `credit` USD and one inference key, made through `url`. */
async function account(url: string, credit: string) {
  const acct = await json(await admin(url, "POST", "/v1/admin/accounts", { name: "Scale" }), 201);
  await json(
    await admin(url, "POST", `/v1/admin/accounts/${acct.id}/adjustments`, {
      amount: credit,
      reason: "t",
    }),
    201,
  );
  const k = await fetch(`${url}/v1/keys`, {
    method: "POST",
    headers: { authorization: `Bearer ${acct.management_key}`, "content-type": "application/json" },
    body: JSON.stringify({ name: "load" }),
  });
  return {
    id: acct.id as string,
    mgmt: acct.management_key as string,
    key: (await json(k, 201)).key,
  };
}

const mgmtGet = async (url: string, mgmt: string, path: string) =>
  await json(await fetch(url + path, { headers: { authorization: `Bearer ${mgmt}` } }), 200);

/** Every usage debit of the account, by request id (asserting one per request). */
async function debitsByRequest(url: string, mgmt: string): Promise<Map<string, bigint>> {
  const out = new Map<string, bigint>();
  let cursor: string | null = null;
  do {
    const page: { data: { reference: string; amount: string }[]; next_cursor: string | null } =
      await mgmtGet(
        url,
        mgmt,
        `/v1/transactions?type=usage_debit&limit=1000${cursor ? `&cursor=${cursor}` : ""}`,
      );
    for (const e of page.data) {
      assert.ok(!out.has(e.reference), "one debit per request");
      out.set(e.reference, -parseUsd(e.amount)!);
    }
    cursor = page.next_cursor;
  } while (cursor);
  return out;
}

/** Waits until every usage event is recorded and the books balance; returns the check. */
const settledBooks = (url: string) =>
  until("the books to balance with nothing pending", 30_000, async () => {
    const v = await json(await admin(url, "GET", "/v1/admin/verify"), 200);
    return v.ok && v.pending_events === 0 ? v : null;
  });

/** The leases in the KV file, read directly. */
async function leasesIn(kvPath: string): Promise<Lease[]> {
  const kv = await Deno.openKv(kvPath);
  try {
    return (await Array.fromAsync(kv.list<Lease>({ prefix: LEASE_PREFIX }))).map((e) => e.value);
  } finally {
    kv.close();
  }
}

function routerEnv(kvPath: string, openai: FakeOpenAI, extra: Record<string, string> = {}) {
  return {
    KV_PATH: kvPath,
    OPENAI_API_KEY: "sk-upstream-test",
    OPENAI_BASE_URL: openai.url,
    ADMIN_TOKEN,
    ...extra,
  };
}

/** The routers' actor counters (`GET /v1/admin/stats`), summed. */
async function statsOf(routers: Router[]): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const r of routers) {
    const s = await json(await admin(r.url, "GET", "/v1/admin/stats"), 200);
    for (const [k, v] of Object.entries(s.actors as Record<string, number>)) {
      out[k] = (out[k] ?? 0) + v;
    }
  }
  return out;
}

const cost = (usage: unknown) => parseUsd((usage as { cost: number }).cost.toFixed(9))!;

for (const n of [2, 3]) {
  Deno.test(`${n} router processes on one KV file: 300 concurrent requests on a balance covering part of them are billed exactly, and the last cents are spendable from each`, async () => {
    const dir = await Deno.makeTempDir();
    const kvPath = `${dir}/router.kv`;
    const openai = startFakeOpenAI();
    // 5 + 20 tokens: $0.0000102 a request; its hold, of 20 output tokens, a little more.
    openai.scenario = { usage: { prompt_tokens: 5, completion_tokens: 20 }, delayMs: 20 };
    const env = routerEnv(kvPath, openai, { LEASE_IDLE_MS: "300" });
    const routers: Router[] = [];
    try {
      for (let i = 0; i < n; i++) routers.push(await spawnRouter(env));
      // Covers about a hundred requests: leases at first, exact shared holds near the end.
      const credit = 1_100_000n;
      const { mgmt, key } = await account(routers[0].url, "0.0011");
      const clients = routers.map((r) =>
        new OpenAI({ apiKey: key, baseURL: `${r.url}/v1`, maxRetries: 0 })
      );
      const chat = (i: number, maxTokens: number) =>
        clients[i % n].chat.completions.create({
          model: "openai/gpt-4o-mini",
          messages: [{ role: "user", content: "hi" }],
          max_tokens: maxTokens,
        }).withResponse();

      const outcomes = await Promise.allSettled(
        Array.from({ length: 300 }, (_, i) => chat(i, 20)),
      );
      const told = new Map<string, bigint>();
      let refused = 0;
      for (const o of outcomes) {
        if (o.status === "fulfilled") {
          told.set(o.value.response.headers.get("x-request-id")!, cost(o.value.data.usage));
        } else {
          const e = o.reason as { status?: number; code?: string };
          assert.deepEqual([e.status, e.code], [402, "insufficient_credits"], "a refusal is 402");
          refused++;
        }
      }
      assert.ok(told.size > 50 && refused > 50, `some fit (${told.size}), some not (${refused})`);
      assert.equal(openai.requests.length, told.size, "no provider call for a refused request");

      // The last cents, from each process in turn: a refusal names the output that still fits
      // (the other processes' leases given back first), and a request of that size is served.
      openai.scenario = { usage: { prompt_tokens: 1, completion_tokens: 1 } };
      for (let i = 0; i < n; i++) {
        const big = await chat(i, 100_000).then(() => null, (e) => e);
        assert.equal(big?.status, 402, "too big for what is left");
        const fits = Number(/Set max_tokens to (\d+)/.exec(big.message)?.[1] ?? 0);
        assert.ok(fits > 0, `process ${i} may still spend: ${big.message}`);
        const last = await chat(i, fits);
        told.set(last.response.headers.get("x-request-id")!, cost(last.data.usage));
      }

      // Both paths were taken: leases while the balance was large, exact shared holds near its end.
      const stats = await statsOf(routers);
      assert.ok(stats.lease_reserves + stats.takes > 0 && stats.shared_reserves > 0);

      await settledBooks(routers[0].url);
      const ledger = await debitsByRequest(routers[0].url, mgmt);
      assert.equal(ledger.size, told.size, "every success debited once, nothing else");
      for (const [id, c] of told) assert.equal(ledger.get(id), c, `debit of ${id}`);
      const used = [...told.values()].reduce((s, c) => s + c, 0n);
      const credits = await mgmtGet(routers[n - 1].url, mgmt, "/v1/credits");
      assert.equal(parseUsd(credits.balance), credit - used, "balance = credit − Σ debits");
      assert.ok(parseUsd(credits.balance)! >= 0n, "never overspent");
      assert.equal(credits.reserved, "0");
    } finally {
      for (const r of routers) await r.stop().catch(() => {});
      await openai.close();
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("router processes killed with SIGKILL at random moments under load, again and again: no settled debit lost, none twice, no credit stranded", async () => {
  const dir = await Deno.makeTempDir();
  const kvPath = `${dir}/router.kv`;
  const openai = startFakeOpenAI();
  // Slow streams and replies: many requests are in flight whenever a process dies.
  openai.scenario = {
    usage: { prompt_tokens: 20, completion_tokens: 10 },
    chunks: 5,
    chunkDelayMs: 30,
    delayMs: 30,
  };
  const env = routerEnv(kvPath, openai, {
    LEASE_TTL_MS: "1000",
    LEASE_IDLE_MS: "300",
    HOLD_TTL_MS: "2000",
  });
  const routers: Router[] = [];
  const dead: Router[] = [];
  try {
    for (let i = 0; i < 3; i++) routers.push(await spawnRouter(env));
    const credit = 1_000_000_000n;
    const { mgmt, key } = await account(routers[0].url, "1");

    const told = new Map<string, bigint>();
    let cut = 0;
    let stop = false;
    const worker = async (w: number) => {
      for (let i = 0; !stop; i++) {
        const r = routers[(w + i) % routers.length];
        const stream = (w + i) % 2 === 0;
        try {
          const res = await fetch(`${r.url}/v1/chat/completions`, {
            method: "POST",
            headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
            body: JSON.stringify({
              model: "gpt-4o-mini",
              messages: [{ role: "user", content: "load" }],
              max_tokens: 64,
              stream,
              ...(stream ? { stream_options: { include_usage: true } } : {}),
            }),
          });
          const text = await res.text();
          assert.equal(res.status, 200, text);
          const usage = stream
            ? text.split("\n").filter((l) => l.includes('"usage":{')).map((l) =>
              JSON.parse(l.slice(6)).usage
            ).pop()
            : JSON.parse(text).usage;
          if (!usage) throw new Error("cut before its usage");
          told.set(res.headers.get("x-request-id")!, cost(usage));
        } catch (e) {
          if (e instanceof assert.AssertionError) throw e;
          cut++;
          await sleep(20);
        }
      }
    };
    const workers = Array.from({ length: 12 }, (_, w) => worker(w));
    // Three times: let the load run a random while, kill a random process, start another.
    for (let round = 0; round < 3; round++) {
      const served = told.size;
      await until(
        "requests served",
        20_000,
        () => Promise.resolve(told.size > served + 10 || null),
      );
      await sleep(Math.random() * 600);
      const victim = routers.splice(Math.floor(Math.random() * routers.length), 1)[0];
      await victim.stop("SIGKILL");
      dead.push(victim);
      routers.push(await spawnRouter(env));
    }
    await sleep(300);
    stop = true;
    await Promise.all(workers);
    assert.ok(cut > 0, "requests were cut by the kills");

    // The dead processes' leases expire and are reclaimed, their holds released; the live ones
    // give theirs back once idle: nothing is left out of the available balance.
    const url = routers[0].url;
    await until("every lease and hold gone", 30_000, async () => {
      const c = await mgmtGet(url, mgmt, "/v1/credits");
      return c.reserved === "0" && (await leasesIn(kvPath)).length === 0 ? true : null;
    });
    const verify = await settledBooks(url);
    assert.deepEqual(verify.differences, []);
    const stats = await statsOf(routers);
    assert.ok(stats.reclaims > 0, "a dead process's lease was reclaimed");

    // Every debit a client was told about is in the ledger, exactly, once; requests cut by a kill
    // after their settlement committed are debited too (their clients were not told), never more.
    const ledger = await debitsByRequest(url, mgmt);
    for (const [id, c] of told) assert.equal(ledger.get(id), c, `debit of ${id}`);
    const used = [...ledger.values()].reduce((s, c) => s + c, 0n);
    const credits = await mgmtGet(url, mgmt, "/v1/credits");
    assert.equal(parseUsd(credits.total_used), used);
    assert.equal(parseUsd(credits.balance), credit - used);
    assert.equal(credits.available, credits.balance, "no credit stranded");
    assert.ok(ledger.size - told.size <= cut, "only cut requests are debited untold");
  } finally {
    for (const r of [...routers, ...dead]) await r.stop("SIGKILL").catch(() => {});
    await openai.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an idle process gives its lease back after LEASE_IDLE_MS; one stopped with SIGTERM returns it at once", async () => {
  const dir = await Deno.makeTempDir();
  const kvPath = `${dir}/router.kv`;
  const openai = startFakeOpenAI();
  const routers: Router[] = [];
  try {
    // Idle after 400 ms: looked after every 100 ms.
    const idle = await spawnRouter(routerEnv(kvPath, openai, { LEASE_IDLE_MS: "400" }));
    routers.push(idle);
    // Never idle long enough: only its shutdown returns its lease.
    const busy = await spawnRouter(routerEnv(kvPath, openai, { LEASE_IDLE_MS: "600000" }));
    routers.push(busy);
    const { id, key } = await account(idle.url, "5");
    const body = JSON.stringify({
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "hi" }],
    });
    for (const r of [idle, busy]) {
      const res = await fetch(`${r.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body,
      });
      await json(res, 200);
    }
    const owners = async () => new Set((await leasesIn(kvPath)).map((l) => l.owner));
    assert.equal((await owners()).size, 2, "each process took a lease");
    // Within LEASE_IDLE_MS and a tick of its last use (the bound here is generous: a loaded
    // machine).
    await until("the idle lease returned", 10_000, async () => (await owners()).size === 1 || null);

    await busy.stop("SIGTERM");
    assert.match(busy.output(), /"msg":"listening"/);
    assert.deepEqual(await leasesIn(kvPath), [], "returned at shutdown");
    const v = await json(await admin(idle.url, "GET", "/v1/admin/verify"), 200);
    assert.equal(v.ok, true);
    const { available, balance } = await json(
      await admin(idle.url, "GET", `/v1/admin/accounts/${id}`),
      200,
    );
    assert.equal(available, balance, "nothing leased or held");
  } finally {
    for (const r of routers) await r.stop().catch(() => {});
    await openai.close();
    await Deno.remove(dir, { recursive: true });
  }
});
