/**
 * Robustness at the edges: Deno KV's size limits, events the recorder cannot write as they are,
 * holds expiring under live streams, and first requests racing their own credit.
 */
import assert from "node:assert/strict";
import { json, startRouter, type TestRouter } from "../_helpers.ts";
import { AccountActors } from "../../lib/billing/actor.ts";
import { recordEvents } from "../../lib/audit/recorder.ts";
import { newId } from "../../lib/ids.ts";
import { holdKey, outboxKey } from "../../lib/kv/schema.ts";
import { interceptCommits, settledUnrecorded, usageEvent } from "../_fixtures.ts";
import { spawnRouter } from "../_main.ts";

const COST = 192_000n;

async function outboxLeft(kv: Deno.Kv, ids: string[]) {
  return (await kv.getMany(ids.map((id) => outboxKey(id)))).filter((e) => e.value !== null)
    .length;
}

Deno.test("a refused request naming a model of 70,000 characters is answered 404 and audited, truncated", async () => {
  const t = await startRouter();
  try {
    const acct = await t.account("1");
    for (const model of ["openai/" + "m".repeat(70_000), "中".repeat(30_000)]) {
      const res = await t.call(acct.key, "POST", "/v1/chat/completions", {
        model,
        messages: [{ role: "user", content: "hi" }],
      });
      const body = await json(res, 404);
      assert.equal(body.error.code, "model_not_found");
    }
    await t.router.flush();
    const audit = await json(await t.call(acct.mgmt, "GET", "/v1/audit"), 200);
    assert.equal(audit.data.length, 2, "both refusals have their audit row");
    for (const row of audit.data) {
      assert.equal(row.status, 404);
      assert.ok(row.model.length <= 256, `model kept short: ${row.model.length}`);
    }
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("an event whose audit row is over KV's value limit is recorded truncated, and the events beside it are recorded", async () => {
  const t = await startRouter({ env: { OUTBOX_DELIVERY: "drainer" } });
  try {
    // 40,000 "é": 40 KB in the outbox entry (one byte each), 80 KB as the audit row's UTF-8.
    const { ids, mgmt } = await settledUnrecorded(t, [
      {},
      { user_agent: "é".repeat(40_000) },
      {},
      { client_ip: "é".repeat(40_000) },
      {},
    ]);
    assert.equal(await outboxLeft(t.kv, ids), 5);
    await recordEvents(t.kv, ids);
    assert.equal(await outboxLeft(t.kv, ids), 0, "every event recorded");
    const tx = await json(await t.call(mgmt, "GET", "/v1/transactions?type=usage_debit"), 200);
    assert.equal(tx.data.length, 5, "one debit per event");
    const audit = await json(await t.call(mgmt, "GET", "/v1/audit"), 200);
    assert.equal(audit.data.length, 5);
    for (const row of audit.data) {
      assert.ok(row.user_agent.length <= 512 && row.client_ip.length <= 64);
    }
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("an outbox entry no atomic can record is left alone: the sweep records the rest and releases expired holds", async () => {
  const t = await startRouter({ env: { OUTBOX_DELIVERY: "drainer" } });
  try {
    const { id, ids, keyId, actors } = await settledUnrecorded(t, [{}, {}, {}]);
    // A hold of a request that died with another process, already expired.
    const dead = newId("hold");
    assert.deepEqual(
      await actors.submit(id, { kind: "reserve", keyId, holdId: dead, amount: 5n, ttlMs: 1 }),
      { ok: true },
    );
    // An entry whose audit key is over KV's 2 KiB key limit: no atomic can record it. Its id sorts
    // before the others, and its account after: it is met first by the sweep, and its atomic
    // would carry the others.
    const poison = usageEvent({
      id: newId("evt", Date.now() - 60_000),
      account_id: "acct_" + "z".repeat(2100),
      balance_after: 1n,
    });
    await t.kv.set(outboxKey(poison.id), poison);
    await new Promise((r) => setTimeout(r, 5));
    const swept = await t.router.svc.background.sweep({ staleAfterMs: -1 });
    assert.equal(swept.recorded, 3, "the three real events are recorded");
    assert.equal(swept.expired, 1, "the dead request's hold is released");
    assert.equal(await outboxLeft(t.kv, ids), 0);
    assert.equal((await t.kv.get(holdKey(id, dead))).value, null);
    assert.ok((await t.kv.get(outboxKey(poison.id))).value, "the bad entry stays for a person");
    // A sweep with only the bad entry left ends too.
    assert.deepEqual(await t.router.svc.background.sweep({ staleAfterMs: -1 }), {
      recorded: 0,
      expired: 0,
      reclaimed: 0,
    });
    await t.kv.delete(outboxKey(poison.id));
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("drainer delivery: two processes sweeping the outbox a crashed one left record each event once and release its holds", async () => {
  const dir = await Deno.makeTempDir();
  const kvPath = `${dir}/router.kv`;
  const env = {
    KV_PATH: kvPath,
    OUTBOX_DELIVERY: "drainer",
    HOLD_TTL_MS: "1000",
    ADMIN_TOKEN: "test-admin-token-0123456789",
  };
  const routers: Awaited<ReturnType<typeof spawnRouter>>[] = [];
  try {
    // The state a process killed between its settling commits and their recording leaves: settled
    // events in the outbox, and holds of requests that were still running.
    const t = await startRouter({ kvPath, env: { OUTBOX_DELIVERY: "drainer" } });
    let acct: { id: string; keyId: string };
    try {
      acct = await t.account("1");
    } finally {
      await t.close();
    }
    const kv = await Deno.openKv(kvPath);
    try {
      const actors = new AccountActors(kv, { delivery: "drainer" });
      for (let i = 0; i < 33; i++) {
        const holdId = newId("hold");
        const r = await actors.submit(acct.id, {
          kind: "reserve",
          keyId: acct.keyId,
          holdId,
          amount: 1_000_000n,
          ttlMs: 1000,
        });
        assert.deepEqual(r, { ok: true });
        // The last three were still running.
        if (i >= 30) continue;
        const event = usageEvent({ account_id: acct.id, key_id: acct.keyId, cost: COST });
        await actors.submit(acct.id, {
          kind: "settle",
          keyId: acct.keyId,
          holdId,
          cost: COST,
          event,
        });
      }
    } finally {
      kv.close();
    }
    routers.push(...await Promise.all([spawnRouter(env), spawnRouter(env)]));
    const admin = (url: string, path: string) =>
      fetch(url + path, { headers: { authorization: `Bearer ${env.ADMIN_TOKEN}` } });
    const end = Date.now() + 40_000;
    for (;;) {
      const [v, a] = await Promise.all([
        json(await admin(routers[0].url, "/v1/admin/verify"), 200),
        json(await admin(routers[1].url, `/v1/admin/accounts/${acct.id}`), 200),
      ]);
      if (v.ok && v.pending_events === 0 && a.reserved === "0") break;
      assert.ok(Date.now() < end, `not recorded in time: ${JSON.stringify([v, a])}`);
      await new Promise((r) => setTimeout(r, 250));
    }
    await Promise.all(routers.splice(0).map((r) => r.stop()));
    const after = await Deno.openKv(kvPath);
    try {
      let debits = 0, audits = 0;
      for await (const e of after.list<{ type: string }>({ prefix: ["ledger", acct.id] })) {
        if (e.value.type === "usage_debit") debits++;
      }
      for await (const _ of after.list({ prefix: ["audit", acct.id] })) audits++;
      assert.equal(debits, 30, "one debit per event");
      assert.equal(audits, 30, "one audit row per event");
    } finally {
      after.close();
    }
  } finally {
    await Promise.all(routers.map((r) => r.stop()));
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a stream lasting several hold TTLs keeps its hold against another process's sweeps: nothing else spends the held credit, and it is charged once, in full", async () => {
  const dir = await Deno.makeTempDir();
  const kvPath = `${dir}/router.kv`;
  // Two processes on one KV; a hold lives 1 s unrenewed, the stream 4 s, and the other process
  // sweeps every 200 ms (and in the loop below).
  const a = await startRouter({ kvPath, env: { HOLD_TTL_MS: "1000" } });
  const b = await startRouter({ kvPath, env: { HOLD_TTL_MS: "1000" } });
  try {
    // $0.0007: room for one worst case of the request below (about $0.0005), not two.
    const acct = await a.account("0.0007");
    const usage = { prompt_tokens: 20, completion_tokens: 1000 };
    a.openai.scenario = { usage, chunks: 40, chunkDelayMs: 100 };
    // The other process's requests would cost as much: had the hold been released, one granted
    // there would leave too little for this stream's charge.
    b.openai.scenario = { usage };
    const request = (stream: boolean) => ({
      model: "openai/gpt-4o-mini",
      messages: [{ role: "user", content: "long" }],
      max_tokens: 1000,
      ...(stream ? { stream: true, stream_options: { include_usage: true } } : {}),
    });
    const res = await a.call(acct.key, "POST", "/v1/chat/completions", request(true));
    assert.equal(res.status, 200);
    const requestId = res.headers.get("x-request-id")!;
    const held = (await json(await b.call(acct.mgmt, "GET", "/v1/credits"), 200)).reserved;
    assert.notEqual(held, "0");
    const started = Date.now();
    let chunks = 0, probes = 0;
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
      // Until the usage chunk, which comes once the stream is settled.
      if (++chunks % 4 !== 0 || text.includes('"usage":{')) continue;
      // The other process sweeps, then tries to spend the credit the stream holds.
      await b.router.svc.background.sweep();
      const c = await json(await b.call(acct.mgmt, "GET", "/v1/credits"), 200);
      assert.equal(c.reserved, held, `the hold is still there after ${Date.now() - started} ms`);
      const probe = await b.call(acct.key, "POST", "/v1/chat/completions", request(false));
      assert.equal((await json(probe, 402)).error.code, "insufficient_credits");
      probes++;
    }
    assert.ok(Date.now() - started > 3000, "the stream outlived several TTLs");
    assert.ok(probes >= 5);
    const told = text.split("\n").filter((l) => l.includes('"usage":{')).map((l) =>
      JSON.parse(l.slice(6)).usage
    ).pop();
    // 20 × $0.15/M + 1000 × $0.60/M, less the default 20 % discount.
    assert.equal(told?.cost, 0.0004824, "the client was told the full cost");
    await a.router.flush();
    await b.router.flush();
    const tx = await json(await b.call(acct.mgmt, "GET", "/v1/transactions?type=usage_debit"), 200);
    assert.equal(tx.data.length, 1, "charged once");
    assert.equal(tx.data[0].reference, requestId);
    assert.equal(tx.data[0].amount, "-0.0004824", "charged in full");
    const credits = await json(await b.call(acct.mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.reserved, "0");
    assert.equal(credits.total_used, "0.0004824");
    assert.equal(a.router.svc.actors.liveHolds.size, 0, "nothing left to renew");
    await a.assertBooks();
    await b.assertBooks();
  } finally {
    await a.close();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the holds of a process that stops renewing (it crashed) expire under another process's sweep, and are not recreated", async () => {
  const t = await startRouter({ env: { HOLD_TTL_MS: "1000" } });
  try {
    const acct = await t.account("1");
    // The other process, on the same KV: it serves one request for a while, then dies.
    const other = new AccountActors(t.kv, { delivery: "drainer" });
    const holdId = newId("hold");
    assert.deepEqual(
      await other.submit(acct.id, {
        kind: "reserve",
        keyId: acct.keyId,
        holdId,
        amount: 1_000_000n,
        ttlMs: 1000,
      }),
      { ok: true },
    );
    const started = Date.now();
    // Alive: renewing every 250 ms, as its Background would; `t` sweeps every 200 ms.
    while (Date.now() - started < 2500) {
      await other.renewLive(1000);
      assert.ok((await t.kv.get(holdKey(acct.id, holdId))).value, "renewed, the hold stays");
      await new Promise((r) => setTimeout(r, 250));
    }
    // Dead: no more renewals, and `t` releases the hold once its last renewal runs out.
    const end = Date.now() + 5000;
    while ((await t.kv.get(holdKey(acct.id, holdId))).value !== null) {
      assert.ok(Date.now() < end, "the dead process's hold never expired");
      await new Promise((r) => setTimeout(r, 100));
    }
    // A late renewal (the process was only stalled) does not bring the hold back.
    assert.equal(await other.renewLive(1000), 0);
    assert.equal((await t.kv.get(holdKey(acct.id, holdId))).value, null);
    assert.equal(other.liveHolds.size, 0);
    const c = await json(await t.call(acct.mgmt, "GET", "/v1/credits"), 200);
    assert.equal(c.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("an account's first requests racing its own first credit are each refused or charged once", async () => {
  const t = await startRouter();
  try {
    for (let round = 0; round < 5; round++) {
      const acct = await t.account("0");
      const [adj, ...replies] = await Promise.all([
        t.admin("POST", `/v1/admin/accounts/${acct.id}/adjustments`, {
          amount: "0.01",
          reason: "first credit",
        }),
        ...Array.from({ length: 4 }, () =>
          t.call(acct.key, "POST", "/v1/chat/completions", {
            model: "openai/gpt-4o-mini",
            messages: [{ role: "user", content: "hi" }],
            max_tokens: 16,
          })),
      ]);
      await json(adj, 201);
      let charged = 0n;
      for (const r of replies) {
        const body = await r.json();
        assert.ok(r.status === 200 || r.status === 402, JSON.stringify(body));
        if (r.status === 200) charged += BigInt(Math.round(body.usage.cost * 1e9));
      }
      await t.router.flush();
      const c = await json(await t.call(acct.mgmt, "GET", "/v1/credits"), 200);
      assert.equal(c.reserved, "0");
      assert.equal(BigInt(Math.round(Number(c.total_used) * 1e9)), charged);
      const tx = await json(await t.call(acct.mgmt, "GET", "/v1/transactions"), 200);
      assert.equal(
        tx.data.filter((e: { type: string }) => e.type === "usage_debit").length,
        replies.filter((r) => r.status === 200).length,
      );
    }
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("the largest request the API accepts settles and records within KV's limits", async () => {
  const t = await startRouter({ env: { TRUSTED_PROXIES: "127.0.0.1" } });
  try {
    // A 255-character Idempotency-Key (header values are bytes) on the first credit.
    const acct = await t.account("0", { name: "鍵".repeat(100) });
    const idem = "~".repeat(255);
    for (let i = 0; i < 2; i++) {
      const r = await fetch(`${t.url}/v1/admin/accounts/${acct.id}/adjustments`, {
        method: "POST",
        headers: {
          authorization: "Bearer test-admin-token-0123456789",
          "content-type": "application/json",
          "idempotency-key": idem,
        },
        body: JSON.stringify({ amount: "100", reason: "r".repeat(500) }),
      });
      await json(r, 201);
    }
    // Thousands of messages near MAX_BODY_BYTES, a user agent of 8 KB, a long proxy chain.
    const messages = Array.from({ length: 4000 }, (_, i) => ({
      role: i % 2 ? "assistant" : "user",
      content: "word ".repeat(400),
    }));
    const headers = {
      "user-agent": "UA/" + "x".repeat(8000),
      "x-forwarded-for": Array.from({ length: 400 }, (_, i) => `10.0.${i >> 8}.${i & 255}`)
        .join(", ") + ", 2001:db8::1",
    };
    for (const stream of [false, true]) {
      const res = await t.call(acct.key, "POST", "/v1/chat/completions", {
        model: "openai/gpt-4o-mini",
        messages,
        max_tokens: 16,
        stream,
        ...(stream ? { stream_options: { include_usage: true } } : {}),
      }, headers);
      assert.equal(res.status, 200, await res.clone().text());
      await res.body?.cancel();
    }
    await t.router.flush();
    const audit = await json(await t.call(acct.mgmt, "GET", "/v1/audit"), 200);
    assert.equal(audit.data.length, 2);
    for (const row of audit.data) {
      assert.equal(row.status, 200);
      assert.equal(row.client_ip, "2001:db8::1");
      assert.equal(row.user_agent.length, 512);
      assert.equal(row.key_name, "鍵".repeat(100));
    }
    const tx = await json(await t.call(acct.mgmt, "GET", "/v1/transactions"), 200);
    assert.equal(tx.data.filter((e: { type: string }) => e.type === "usage_debit").length, 2);
    assert.equal(tx.data.filter((e: { type: string }) => e.type === "adjustment").length, 1);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

/** Waits (at most 5 s) until the account has nothing reserved: its holds were released. */
async function untilReleased(t: TestRouter, mgmt: string) {
  const end = Date.now() + 5000;
  for (;;) {
    const c = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    if (c.reserved === "0") return;
    assert.ok(Date.now() < end, `the hold is never released: ${JSON.stringify(c)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * A KV whose first atomic matching `fails` (given the first part of every key the atomic sets or
 * deletes) fails to commit, as a transient store error would; `failed()` tells whether it did.
 */
function failingOnce(fails: (prefixes: Set<unknown>) => boolean) {
  let failNext = true;
  const wrapKv = (kv: Deno.Kv) =>
    interceptCommits(kv, (prefixes, commit) => {
      if (!failNext || !fails(prefixes)) return commit();
      failNext = false;
      return Promise.reject(new Error("transient store failure"));
    });
  return { wrapKv, failed: () => !failNext };
}

for (const leases of ["off", "on"]) {
  const what = leases === "on" ? "its lease" : "its own process's sweeper";
  Deno.test(`a hold whose settlement failed to commit is released by ${what}`, async () => {
    // The KV fails the first commit that settles a hold (a transient store error): a shared
    // hold's settlement deletes the hold, a lease hold's writes the lease.
    const { wrapKv, failed } = failingOnce((prefixes) =>
      prefixes.has(leases === "on" ? "lease" : "hold") && prefixes.has("outbox")
    );
    const t = await startRouter({
      env: { HOLD_TTL_MS: "1000", BALANCE_LEASES: leases, LEASE_IDLE_MS: "200" },
      wrapKv,
    });
    try {
      const acct = await t.account("1");
      const res = await t.call(acct.key, "POST", "/v1/chat/completions", {
        model: "openai/gpt-4o-mini",
        messages: [{ role: "user", content: "hi" }],
        max_tokens: 16,
      });
      // The reply was made but could not be billed: the client is told so, nothing is charged.
      assert.equal(res.status, 500);
      await res.body?.cancel();
      assert.ok(failed(), "the settlement failed");
      await untilReleased(t, acct.mgmt);
      const credits = await json(await t.call(acct.mgmt, "GET", "/v1/credits"), 200);
      assert.deepEqual([credits.balance, credits.total_used], ["1", "0"]);
      await t.assertBooks();
    } finally {
      await t.close();
    }
  });
}

Deno.test("a request whose handler fails with its hold unsettled stops renewing it: the sweeper releases it", async () => {
  // The KV fails the first commit that only records an event (a failed attempt's row).
  const { wrapKv, failed } = failingOnce((prefixes) =>
    prefixes.has("outbox") && !prefixes.has("hold")
  );
  const t = await startRouter({ env: { HOLD_TTL_MS: "1000" }, wrapKv });
  try {
    const acct = await t.account("1");
    // The provider fails: recording the failed attempt before its retry fails, and the handler
    // throws with the hold neither settled nor released.
    t.openai.scenario = { status: 503 };
    const res = await t.call(acct.key, "POST", "/v1/chat/completions", {
      model: "openai/gpt-4o-mini",
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 16,
    });
    assert.equal(res.status, 500);
    await res.body?.cancel();
    assert.ok(failed(), "the attempt's record failed");
    await untilReleased(t, acct.mgmt);
    assert.equal(t.router.svc.actors.liveHolds.size, 0);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});
