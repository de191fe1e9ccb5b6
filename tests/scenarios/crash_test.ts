import assert from "node:assert/strict";
import { ADMIN_TOKEN, json, until } from "../_helpers.ts";
import { startFakeOpenAI } from "../_fakes/openai.ts";
import { spawnRouter } from "../_main.ts";
import { parseUsd } from "../../lib/money.ts";

const CANARY = `canary-${crypto.randomUUID()}`;

interface Done {
  requestId: string;
  cost: bigint;
}

/** One request, streaming or not; resolves with what the client was told it cost. */
async function request(url: string, key: string, stream: boolean): Promise<Done> {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: `load ${CANARY}` }],
      max_tokens: 64,
      stream,
      ...(stream ? { stream_options: { include_usage: true } } : {}),
    }),
  });
  const requestId = res.headers.get("x-request-id")!;
  const text = await res.text();
  assert.equal(res.status, 200, text);
  let usage: { cost: number } | undefined;
  if (!stream) usage = JSON.parse(text).usage;
  else {
    for (const line of text.split("\n")) {
      if (line.startsWith("data: {") && line.includes('"usage":{')) {
        usage = JSON.parse(line.slice(6)).usage;
      }
    }
  }
  assert.ok(usage, "the client was told the cost");
  return { requestId, cost: parseUsd(usage.cost.toFixed(9))! };
}

Deno.test("a router killed with SIGKILL under load loses no settled debit and strands no hold", async () => {
  const dir = await Deno.makeTempDir();
  const openai = startFakeOpenAI();
  // Slow streams: many are in flight whenever the process dies.
  openai.scenario = {
    usage: { prompt_tokens: 20, completion_tokens: 10 },
    chunks: 10,
    chunkDelayMs: 40,
  };
  const env = {
    KV_PATH: `${dir}/router.kv`,
    OPENAI_API_KEY: "sk-upstream-test",
    OPENAI_BASE_URL: openai.url,
    ADMIN_TOKEN,
    HOLD_TTL_MS: "2000",
    PATH: Deno.env.get("PATH") ?? "",
    HOME: Deno.env.get("HOME") ?? "",
    ...(Deno.env.get("DENO_DIR") ? { DENO_DIR: Deno.env.get("DENO_DIR")! } : {}),
  };
  const admin = (url: string, method: string, path: string, body?: unknown) =>
    fetch(url + path, {
      method,
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  let first: Awaited<ReturnType<typeof spawnRouter>> | null = null;
  let second: Awaited<ReturnType<typeof spawnRouter>> | null = null;
  try {
    first = await spawnRouter(env);
    const acct = await json(
      await admin(first.url, "POST", "/v1/admin/accounts", { name: "Crash" }),
      201,
    );
    await json(
      await admin(first.url, "POST", `/v1/admin/accounts/${acct.id}/adjustments`, {
        amount: "1",
        reason: "t",
      }),
      201,
    );
    const k = await fetch(`${first.url}/v1/keys`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${acct.management_key}`,
        "content-type": "application/json",
      },
      body: JSON.stringify({ name: "load" }),
    });
    const key = (await json(k, 201)).key;

    // Eight clients in a loop, streaming and not, until the process dies under them.
    const completed: Done[] = [];
    let inFlightStreams = 0;
    let failures = 0;
    let stop = false;
    const url = first.url;
    const workers = Array.from({ length: 8 }, async (_, w) => {
      for (let i = 0; !stop; i++) {
        const stream = (i + w) % 2 === 0;
        if (stream) inFlightStreams++;
        try {
          completed.push(await request(url, key, stream));
        } catch {
          failures++;
        } finally {
          if (stream) inFlightStreams--;
        }
      }
    });
    await until(
      "completed requests with streams in flight",
      20_000,
      () => Promise.resolve(completed.length >= 20 && inFlightStreams >= 2 ? true : null),
    );
    const atKill = inFlightStreams;
    await first.stop("SIGKILL");
    stop = true;
    await Promise.all(workers);
    assert.ok(atKill > 0 && failures > 0, "requests were cut by the kill");
    const expectedUsed = completed.reduce((s, d) => s + d.cost, 0n);

    second = await spawnRouter(env);
    const restarted = second;
    const mgmt = acct.management_key;
    const get = async (path: string) =>
      await json(
        await fetch(restarted.url + path, { headers: { authorization: `Bearer ${mgmt}` } }),
        200,
      );
    // Holds of the cut requests expire and the sweeper releases them; queued events are recorded.
    const early = await get("/v1/credits");
    assert.notEqual(early.reserved, "0", "the crash left holds behind");
    const verify = await until("holds released and events recorded", 30_000, async () => {
      const v = await json(await admin(restarted.url, "GET", "/v1/admin/verify"), 200);
      const c = await get("/v1/credits");
      return v.ok && v.pending_events === 0 && c.reserved === "0" ? v : null;
    });
    assert.deepEqual(verify.differences, []);

    // Every debit a client was told about is in the ledger, exactly.
    const ledger = new Map<string, bigint>();
    let cursor: string | null = null;
    do {
      const page: { data: { reference: string; amount: string }[]; next_cursor: string | null } =
        await get(
          `/v1/transactions?type=usage_debit&limit=1000${cursor ? `&cursor=${cursor}` : ""}`,
        );
      for (const e of page.data) {
        assert.ok(!ledger.has(e.reference), "one debit per request");
        ledger.set(e.reference, -parseUsd(e.amount)!);
      }
      cursor = page.next_cursor;
    } while (cursor);
    for (const d of completed) {
      assert.equal(ledger.get(d.requestId), d.cost, `debit of ${d.requestId}`);
    }
    // Requests cut by the crash may have settled too (their cost is in the ledger), never more.
    const credits = await get("/v1/credits");
    const used = parseUsd(credits.total_used)!;
    assert.ok(used >= expectedUsed);
    assert.equal(parseUsd(credits.balance), 1_000_000_000n - used);
    assert.equal([...ledger.values()].reduce((s, v) => s + v, 0n), used);

    // The restarted router serves.
    await request(second.url, key, true);
    // Prompts and completions carried the canary: neither process logged it.
    assert.ok(openai.requests.some((r) => JSON.stringify(r).includes(CANARY)));
    for (const out of [first.output(), second.output()]) {
      assert.match(out, /"msg":"listening"/);
      assert.ok(!out.includes(CANARY), "no prompt or completion text in the logs");
    }
  } finally {
    await first?.stop("SIGKILL").catch(() => {});
    await second?.stop("SIGTERM").catch(() => {});
    await openai.close();
    await Deno.remove(dir, { recursive: true });
  }
});
