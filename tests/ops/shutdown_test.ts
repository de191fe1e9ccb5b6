import assert from "node:assert/strict";
import { ADMIN_TOKEN, json } from "../_helpers.ts";
import { type Scenario, startFakeOpenAI } from "../_fakes/openai.ts";
import { spawnRouter } from "../_main.ts";
import { verifyBooks } from "../../lib/billing/accounts.ts";
import { parseUsd } from "../../lib/money.ts";
import type { LedgerEntry } from "../../lib/billing/types.ts";

const STREAMS = 20;

async function setUp(url: string) {
  const admin = (path: string, body: unknown) =>
    fetch(url + path, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  const acct = await json(await admin("/v1/admin/accounts", { name: "Draining" }), 201);
  await json(
    await admin(`/v1/admin/accounts/${acct.id}/adjustments`, { amount: "5", reason: "t" }),
    201,
  );
  const k = await fetch(`${url}/v1/keys`, {
    method: "POST",
    headers: { authorization: `Bearer ${acct.management_key}`, "content-type": "application/json" },
    body: JSON.stringify({ name: "streams" }),
  });
  return { accountId: acct.id as string, key: (await json(k, 201)).key as string };
}

const chatBody = JSON.stringify({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "a long answer please" }],
  max_tokens: 64,
  stream: true,
  stream_options: { include_usage: true },
});

/** A stream opened through the router, its first chunk read. */
async function openStream(url: string, key: string) {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: chatBody,
  });
  assert.equal(res.status, 200);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let text = (await reader.read()).value ?? "";
  let sinceMark = 0;
  let marked = false;
  return {
    /** From now on chunks are counted. */
    mark: () => marked = true,
    /** Reads to the end; resolves with the text and the chunks read after `mark`. */
    async rest() {
      for (let r = await reader.read(); !r.done; r = await reader.read()) {
        text += r.value;
        if (marked) sinceMark++;
      }
      return { text, sinceMark };
    },
  };
}

const costOf = (sse: string) => {
  const line = sse.split("\n").find((l) => l.startsWith("data: {") && l.includes('"usage":{'));
  return line ? parseUsd(JSON.parse(line.slice(6)).usage.cost.toFixed(9)) : null;
};

async function ledgerOf(kvPath: string, accountId: string) {
  const kv = await Deno.openKv(kvPath);
  try {
    const rows = (await Array.fromAsync(kv.list<LedgerEntry>({ prefix: ["ledger", accountId] })))
      .map((e) => e.value);
    return { rows, books: await verifyBooks(kv, { scan: true }) };
  } finally {
    kv.close();
  }
}

/** A router process on a KV file, its fake OpenAI streaming `chunks` chunks `chunkDelayMs` apart. */
async function streamingRouter(scenario: Scenario, env: Record<string, string> = {}) {
  const dir = await Deno.makeTempDir();
  const openai = startFakeOpenAI();
  openai.scenario = { usage: { prompt_tokens: 20, completion_tokens: 10 }, ...scenario };
  const kvPath = `${dir}/router.kv`;
  const cleanUp = async () => {
    await openai.close();
    await Deno.remove(dir, { recursive: true });
  };
  const router = await spawnRouter({
    KV_PATH: kvPath,
    ADMIN_TOKEN,
    OPENAI_API_KEY: "sk-upstream-test",
    OPENAI_BASE_URL: openai.url,
    ...env,
  }).catch(async (e) => {
    await cleanUp();
    throw e;
  });
  return {
    router,
    kvPath,
    async close() {
      await router.stop("SIGKILL");
      await cleanUp();
    },
  };
}

Deno.test("SIGTERM during 20 open streams: /readyz 503 at once, each stream finishes and is billed, exit 0", async () => {
  // Each stream runs about two seconds: all of them are open when the signal comes.
  const setup = await streamingRouter({ chunks: 20, chunkDelayMs: 100 });
  const { router, kvPath } = setup;
  try {
    const { accountId, key } = await setUp(router.url);
    const streams = await Promise.all(
      Array.from({ length: STREAMS }, () => openStream(router.url, key)),
    );
    router.child.kill("SIGTERM");
    let ready = await fetch(`${router.url}/readyz`);
    while (ready.status === 200) {
      await ready.body?.cancel();
      ready = await fetch(`${router.url}/readyz`);
    }
    assert.deepEqual(await json(ready, 503), { ok: false, state: "draining" });
    for (const s of streams) s.mark();
    const refused = await fetch(`${router.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: chatBody,
    });
    assert.equal((await json(refused, 503)).error.code, "shutting_down");

    const done = await Promise.all(streams.map((s) => s.rest()));
    for (const { text, sinceMark } of done) {
      assert.ok(sinceMark > 0, "the stream went on while the router drained");
      assert.match(text, /data: \[DONE\]/);
    }
    const status = await router.child.status;
    assert.equal(status.code, 0, router.output());

    const told = done.map(({ text }) => costOf(text));
    assert.ok(told.every((c) => c !== null && c > 0n), "each client was told its cost");
    const { rows, books } = await ledgerOf(kvPath, accountId);
    const debits = rows.filter((r) => r.type === "usage_debit");
    assert.equal(debits.length, STREAMS, "every stream was billed and recorded before exit");
    assert.equal(
      debits.reduce((s, r) => s - r.amount, 0n),
      told.reduce((s, c) => s! + c!, 0n),
    );
    assert.equal(books.pending_events, 0);
    assert.deepEqual(books.differences, []);
    assert.ok(books.ok);
  } finally {
    await setup.close();
  }
});

Deno.test("SIGTERM with a stream outlasting SHUTDOWN_GRACE_MS: the process exits 0 at the deadline, books intact", async () => {
  // A stream of more than three minutes: only the deadline ends the process before it.
  const setup = await streamingRouter({ chunks: 1000, chunkDelayMs: 200 }, {
    SHUTDOWN_GRACE_MS: "300",
  });
  const { router, kvPath } = setup;
  try {
    const { key } = await setUp(router.url);
    const stream = await openStream(router.url, key);
    router.child.kill("SIGTERM");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const status = await Promise.race([
      router.child.status,
      new Promise<null>((r) => timer = setTimeout(() => r(null), 60_000)),
    ]);
    clearTimeout(timer);
    assert.ok(status, "the process ended at the deadline, not with the stream");
    assert.equal(status.code, 0);
    assert.match(router.output(), /"msg":"requests cut at the shutdown deadline","requests":1/);
    await stream.rest().catch(() => {});
    const { books } = await ledgerOf(kvPath, "");
    // The cut stream's hold stays until it expires: reserved = Σ holds still.
    assert.deepEqual(books.differences, []);
    assert.equal(books.pending_events, 0);
  } finally {
    await setup.close();
  }
});
