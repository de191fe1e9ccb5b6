import assert from "node:assert/strict";
import { ADMIN_TOKEN, json } from "../../_helpers.ts";
import { type Scenario, startFakeOpenAI } from "../../_fakes/openai.ts";
import { spawnRouter } from "../../_main.ts";
import { accountWithKey } from "./_ops.ts";
import { verifyBooks } from "../../../lib/billing/accounts.ts";
import { getAuditRow } from "../../../lib/audit/query.ts";
import { parseUsd } from "../../../lib/money.ts";
import { STREAM_SHUTDOWN } from "../../../lib/sse.ts";
import { countStreamedOutput } from "../../../lib/proxy/tokens.ts";
import { encodingCounter } from "../../../lib/tokenizer.ts";
import type { AuditRow, BalanceState, LedgerEntry } from "../../../lib/billing/types.ts";
import { balanceKey } from "../../../lib/kv/schema.ts";

// The router counts gpt-4o-mini's output with this tokenizer.
const o200k = await encodingCounter("o200k_base");
const ENDED = `data: ${JSON.stringify({ error: STREAM_SHUTDOWN })}\n\n`;

const STREAMS = 20;
// Streams asking for a long answer outlast the grace: about 50 s against 3 s.
const LONG = 8;
const GRACE_MS = 3000;

const chatBody = (content: string) =>
  JSON.stringify({
    model: "gpt-4o-mini",
    messages: [{ role: "user", content }],
    max_tokens: 2000,
    stream: true,
    stream_options: { include_usage: true },
  });

/** A stream opened through the router, its first chunk read. */
async function openStream(url: string, key: string, content = "a short answer please") {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: chatBody(content),
  });
  assert.equal(res.status, 200);
  const requestId = res.headers.get("x-request-id")!;
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let text = (await reader.read()).value ?? "";
  let sinceMark = 0;
  let marked = false;
  return {
    requestId,
    /** From now on chunks are counted. */
    mark: () => marked = true,
    /** Reads to the end; resolves with the text and the chunks read after `mark`. */
    async rest() {
      for (let r = await reader.read(); !r.done; r = await reader.read()) {
        text += r.value;
        if (marked) sinceMark++;
      }
      return { requestId, text, sinceMark };
    },
  };
}

const costOf = (sse: string) => {
  const line = sse.split("\n").find((l) => l.startsWith("data: {") && l.includes('"usage":{'));
  return line ? parseUsd(JSON.parse(line.slice(6)).usage.cost.toFixed(9)) : null;
};

/** After the process ended: the account's ledger rows, the audit rows of `requestIds`, the books. */
async function booksOf(kvPath: string, accountId: string, requestIds: string[] = []) {
  const kv = await Deno.openKv(kvPath);
  try {
    const rows = (await Array.fromAsync(kv.list<LedgerEntry>({ prefix: ["ledger", accountId] })))
      .map((e) => e.value);
    const audit = new Map<string, AuditRow | null>();
    for (const id of requestIds) audit.set(id, await getAuditRow(kv, accountId, id));
    return { rows, audit, books: await verifyBooks(kv, { scan: true }) };
  } finally {
    kv.close();
  }
}

/** A router process on a KV file, its fake OpenAI streaming as `scenario` says. */
async function streamingRouter(scenario: Scenario, env: Record<string, string> = {}) {
  const dir = await Deno.makeTempDir();
  const openai = startFakeOpenAI();
  openai.scenario = scenario;
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
    openai,
    async close() {
      await router.stop("SIGKILL");
      await cleanUp();
    },
  };
}

Deno.test("SIGTERM during 20 open streams, 8 outlasting SHUTDOWN_GRACE_MS: /readyz 503 at once, the others finish, those 8 end at the deadline with an error event; each billed for what it delivered, exit 0", async () => {
  // A short answer runs about a second; a long one, a thousand chunks 50 ms apart, 50 seconds.
  const setup = await streamingRouter({
    usage: { prompt_tokens: 20, completion_tokens: 10 },
    chunkDelayMs: 50,
    chunksFor: (body) => JSON.stringify(body).includes("long answer") ? 1000 : 20,
  }, { SHUTDOWN_GRACE_MS: String(GRACE_MS) });
  const { router, kvPath } = setup;
  try {
    const { accountId, key } = await accountWithKey(router.url);
    const streams = await Promise.all(
      Array.from(
        { length: STREAMS },
        (_, i) =>
          openStream(
            router.url,
            key,
            i < LONG ? "a long answer please, ".repeat(40) : "a short answer please",
          ),
      ),
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
      body: chatBody("too late"),
    });
    assert.equal((await json(refused, 503)).error.code, "shutting_down");

    const done = await Promise.all(streams.map((s) => s.rest()));
    const status = await router.child.status;
    assert.equal(status.code, 0, router.output());
    assert.doesNotMatch(router.output(), /requests cut at the shutdown deadline/);

    const { rows, audit, books } = await booksOf(
      kvPath,
      accountId,
      done.map((d) => d.requestId),
    );
    const debits = rows.filter((r) => r.type === "usage_debit");
    assert.equal(debits.length, STREAMS, "every stream was billed and recorded before exit");
    let billed = 0n;
    for (const [i, { requestId, text, sinceMark }] of done.entries()) {
      assert.ok(sinceMark > 0, "the stream went on while the router drained");
      const row = audit.get(requestId)!;
      assert.ok(row, `the audit row of ${requestId}`);
      if (i < LONG) {
        // Ended at the deadline: the error event last, billed for the input and what went out.
        assert.ok(text.endsWith(ENDED), text.slice(-300));
        assert.doesNotMatch(text, /\[DONE\]/);
        assert.equal(row.error_code, "shutting_down");
        assert.equal(
          row.completion_tokens,
          countStreamedOutput(text.slice(0, -ENDED.length), o200k),
        );
        assert.ok(row.completion_tokens > 0 && row.cost > 0n);
      } else {
        assert.match(text, /data: \[DONE\]\n\n$/);
        assert.equal(row.error_code, null);
        assert.equal(row.cost, costOf(text), "billed what the client was told");
      }
      billed += row.cost;
    }
    assert.equal(debits.reduce((s, r) => s - r.amount, 0n), billed);
    assert.equal(books.pending_events, 0);
    assert.deepEqual(books.differences, []);
    assert.ok(books.ok);
  } finally {
    await setup.close();
  }
});

Deno.test("SIGTERM while requests wait for their provider past SHUTDOWN_GRACE_MS: each is answered 503 shutting_down at the deadline, its hold released, nothing billed, exit 0", async () => {
  // The provider answers after a minute: a JSON request and a stream both still wait at the deadline.
  const setup = await streamingRouter({ delayMs: 60_000 }, { SHUTDOWN_GRACE_MS: "1500" });
  const { router, kvPath, openai } = setup;
  try {
    const { accountId, key } = await accountWithKey(router.url);
    const ask = (stream: boolean) =>
      fetch(`${router.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: JSON.stringify({
          model: "gpt-4o-mini",
          messages: [{ role: "user", content: "a slow answer please" }],
          max_tokens: 100,
          ...(stream ? { stream: true } : {}),
        }),
      });
    const waiting = [ask(false), ask(true)];
    while (openai.requests.length < 2) await new Promise((r) => setTimeout(r, 20));
    router.child.kill("SIGTERM");
    const answers = await Promise.all(waiting);
    const requestIds: string[] = [];
    for (const res of answers) {
      assert.equal(res.headers.get("retry-after"), "1");
      requestIds.push(res.headers.get("x-request-id")!);
      const body = await json(res, 503);
      assert.equal(body.error.code, "shutting_down");
    }
    const status = await router.child.status;
    assert.equal(status.code, 0, router.output());
    assert.doesNotMatch(router.output(), /requests cut at the shutdown deadline/);

    const { rows, audit, books } = await booksOf(kvPath, accountId, requestIds);
    assert.deepEqual(rows.map((r) => [r.type, r.amount]), [["adjustment", 5_000_000_000n]]);
    for (const id of requestIds) {
      const row = audit.get(id);
      assert.ok(row, `the audit row of ${id}`);
      assert.equal(row.status, 503);
      assert.equal(row.error_code, "shutting_down");
      assert.equal(row.cost, 0n);
    }
    const kv = await Deno.openKv(kvPath);
    const balance = (await kv.get<BalanceState>(balanceKey(accountId))).value;
    kv.close();
    assert.equal(balance?.reserved, 0n, "every hold released");
    assert.equal(balance?.balance, 5_000_000_000n);
    assert.deepEqual(books.differences, []);
    assert.ok(books.ok);
  } finally {
    await setup.close();
  }
});
