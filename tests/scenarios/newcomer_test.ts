/**
 * The newcomer's path, end to end: the router started the way README starts it (`deno task start`
 * in a child process, development billing, the admin token read from what it prints), README's steps
 * followed literally, and every view of the money (balance, ledger, audit export, usage, the
 * key's spend, the cost the SDK saw) agreeing to the nano-dollar.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startFakeOpenAI } from "../_fakes/openai.ts";
import { padding } from "../_helpers.ts";
import { parseUsd } from "../../lib/money.ts";

const ROOT = new URL("../../", import.meta.url);

/** Exact nano-USD of a decimal string from the API. */
function nanos(text: unknown): bigint {
  const n = parseUsd(String(text));
  assert.notEqual(n, null, `not a USD amount: ${text}`);
  return n!;
}

/** Exact nano-USD of a `usage.cost` number (printed by the router from a nano-USD integer). */
const costNanos = (n: unknown) => nanos((n as number).toFixed(9));

/** Reads a child's output line by line, keeping every line, so the pipe never fills. */
function lineReader(stream: ReadableStream<Uint8Array>) {
  const lines: string[] = [];
  let ended = false;
  let wake = () => {};
  const done = (async () => {
    const decoder = new TextDecoder();
    let rest = "";
    for await (const bytes of stream) {
      rest += decoder.decode(bytes, { stream: true });
      let i;
      while ((i = rest.indexOf("\n")) >= 0) {
        lines.push(rest.slice(0, i));
        rest = rest.slice(i + 1);
      }
      wake();
    }
    rest += decoder.decode();
    if (rest) lines.push(rest);
    ended = true;
    wake();
  })();
  return {
    lines,
    done,
    /** The first line matching `re`, waiting for it until `ms` have passed or the output ends. */
    async waitFor(re: RegExp, ms: number): Promise<RegExpExecArray> {
      const deadline = Date.now() + ms;
      while (true) {
        for (const line of lines) {
          const m = re.exec(line);
          if (m) return m;
        }
        if (ended || Date.now() > deadline) {
          throw new Error(`no line matching ${re} in the output:\n${lines.join("\n")}`);
        }
        let timer: ReturnType<typeof setTimeout> | undefined;
        await new Promise<void>((resolve) => {
          wake = resolve;
          timer = setTimeout(resolve, 100);
        });
        clearTimeout(timer);
      }
    },
  };
}

/** A CSV line (RFC 4180) split into its fields. */
function csvFields(line: string): string[] {
  const out: string[] = [];
  let field = "";
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i];
    if (quoted) {
      if (ch === '"' && line[i + 1] === '"') field += '"', i++;
      else if (ch === '"') quoted = false;
      else field += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ",") out.push(field), field = "";
    else field += ch;
  }
  out.push(field);
  return out;
}

// Known usage per request, priced at gpt-4o-mini's list prices (input $0.15/M, cached input
// $0.075/M, output $0.60/M) less the default 20 %:
// 1. 600 × 0.15 + 400 × 0.075 + 200 × 0.60 = 240 µ$ market → $0.000192
// 2. 2000 × 0.15 + 1000 × 0.60 = 900 µ$ market → $0.00072
// 3. 10 × 0.15 + 7 × 0.60 = 5.7 µ$ market → $0.00000456
/** Sent in prompts and echoed in completions: it must never reach the KV file or the logs. */
const CANARY = `canary-${crypto.randomUUID()}`;

const CALLS = [
  {
    usage: {
      prompt_tokens: 1000,
      completion_tokens: 200,
      prompt_tokens_details: { cached_tokens: 400 },
    },
    cost: 192_000n,
    market: 240_000n,
  },
  { usage: { prompt_tokens: 2000, completion_tokens: 1000 }, cost: 720_000n, market: 900_000n },
  { usage: { prompt_tokens: 10, completion_tokens: 7 }, cost: 4_560n, market: 5_700n },
];

Deno.test("a newcomer follows README: start, account, credit, SDK calls, books agree to the nano-dollar", async () => {
  const openai = startFakeOpenAI();
  const dir = await Deno.makeTempDir({ prefix: "newcomer-" });
  const kvPath = `${dir}/router.kv`;
  // Only what a newcomer's shell holds and sets: no ADMIN_TOKEN, no Stripe key.
  const env: Record<string, string> = {
    PORT: "0", // a free port, read back from the "listening" line
    KV_PATH: kvPath,
    OPENAI_API_KEY: "sk-newcomer-upstream",
    OPENAI_BASE_URL: openai.url,
    NO_COLOR: "1",
  };
  const shell = ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME", "TMPDIR", "DENO_CERT"];
  for (const name of [...shell, "NPM_CONFIG_REGISTRY", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"]) {
    const v = Deno.env.get(name);
    if (v !== undefined) env[name] = v;
  }
  const child = new Deno.Command(Deno.execPath(), {
    // README's start command; the task runner passes SIGTERM on to the router.
    args: ["task", "start"],
    cwd: ROOT,
    env,
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const out = lineReader(child.stdout);
  const err = lineReader(child.stderr);
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  try {
    // What the start command prints: the development admin token once, then where it listens.
    const admin =
      (await out.waitFor(/^development admin token \(shown once\): (\S+)$/, 120_000))[1];
    const base = JSON.parse((await out.waitFor(/^{.*"msg":"listening".*}$/, 120_000))[0])
      .url as string;
    const starting = JSON.parse((await out.waitFor(/^{.*"msg":"starting".*}$/, 1_000))[0]);
    assert.equal(starting.billing_mode, "development");
    assert.equal(starting.kv, kvPath);
    assert.deepEqual(starting.providers, ["openai"]);
    assert.equal(out.lines.filter((l) => l.includes(admin)).length, 1, "the token is shown once");
    // README: requests are served once it says "ready" (migrations done; /readyz 503 before).
    await out.waitFor(/^{.*"msg":"ready".*}$/, 60_000);

    // README's curl commands: `curl -s URL -H "authorization: Bearer …" -d '…'` is a POST with
    // curl's default form content type, and the router reads the body as JSON regardless.
    const curl = async (path: string, token: string, data?: string) => {
      const res = await fetch(base + path, {
        method: data === undefined ? "GET" : "POST",
        headers: {
          authorization: `Bearer ${token}`,
          ...(data === undefined ? {} : { "content-type": "application/x-www-form-urlencoded" }),
        },
        body: data,
      });
      const text = await res.text();
      return { status: res.status, headers: res.headers, text, body: JSON.parse(text) };
    };

    const acct = await curl("/v1/admin/accounts", admin, '{"name":"Acme"}');
    assert.equal(acct.status, 201, acct.text);
    assert.match(acct.body.id, /^acct_/);
    assert.match(acct.body.management_key, /^er-/);
    const mgmt: string = acct.body.management_key;

    const packages = await curl("/v1/billing/packages", mgmt);
    const starter = packages.body.data.find((p: { id: string }) => p.id === "starter");
    assert.ok(starter, packages.text);
    const checkout = await curl("/v1/billing/checkout", mgmt, '{"package_id":"starter"}');
    assert.equal(checkout.status, 201, checkout.text);
    assert.equal(checkout.body.transaction.type, "purchase");
    assert.equal(nanos(checkout.body.transaction.amount), nanos(starter.credits));

    const adjustment = await curl(
      `/v1/admin/accounts/${acct.body.id}/adjustments`,
      admin,
      '{"amount":"5","reason":"welcome credit"}',
    );
    assert.equal(adjustment.status, 201, adjustment.text);
    assert.equal(adjustment.body.type, "adjustment");
    const granted = nanos(starter.credits) + nanos("5");

    const created = await curl("/v1/keys", mgmt, '{"name":"backend"}');
    assert.equal(created.status, 201, created.text);
    assert.match(created.body.key, /^er-/);
    const key: string = created.body.key;

    // The OpenAI SDK, as README shows it: non-streaming, streaming with usage, streaming without.
    const client = new OpenAI({ apiKey: key, baseURL: `${base}/v1` });
    const seen: { requestId: string; cost: bigint | null; streaming: boolean }[] = [];

    openai.scenario = { usage: CALLS[0].usage };
    // A prompt of 1000 tokens comes with a body of at least as many bytes.
    const one = await client.chat.completions.create({
      model: "openai/gpt-4o-mini",
      ...padding(1000),
      messages: [{ role: "user", content: "hi" }],
    }).withResponse();
    assert.equal(one.data.choices[0].message.content, "Echo: hi");
    const usage = one.data.usage as unknown as Record<string, number>;
    assert.equal(usage.prompt_tokens, 1000);
    assert.equal(costNanos(usage.market_cost), CALLS[0].market);
    seen.push({
      requestId: one.response.headers.get("x-request-id")!,
      cost: costNanos(usage.cost),
      streaming: false,
    });

    openai.scenario = { usage: CALLS[1].usage, chunks: 5 };
    const two = await client.chat.completions.create({
      model: "openai/gpt-4o-mini",
      ...padding(2000),
      messages: [{ role: "user", content: `stream with usage ${CANARY}` }],
      stream: true,
      stream_options: { include_usage: true },
    }).withResponse();
    let text = "";
    let streamUsage: Record<string, number> | null = null;
    for await (const chunk of two.data) {
      text += chunk.choices[0]?.delta?.content ?? "";
      if (chunk.usage) streamUsage = chunk.usage as unknown as Record<string, number>;
    }
    assert.ok(streamUsage, "the usage chunk, asked for");
    assert.equal(costNanos(streamUsage.market_cost), CALLS[1].market);
    assert.equal(text, `Echo: stream with usage ${CANARY}`);
    seen.push({
      requestId: two.response.headers.get("x-request-id")!,
      cost: costNanos(streamUsage.cost),
      streaming: true,
    });

    openai.scenario = { usage: CALLS[2].usage, chunks: 3 };
    const three = await client.chat.completions.create({
      model: "openai/gpt-4o-mini",
      messages: [{ role: "user", content: `stream without usage ${CANARY}` }],
      stream: true,
    }).withResponse();
    text = "";
    for await (const chunk of three.data) {
      assert.equal(chunk.usage ?? null, null, "no usage chunk unless asked for");
      text += chunk.choices[0]?.delta?.content ?? "";
    }
    assert.equal(text, `Echo: stream without usage ${CANARY}`);
    seen.push({
      requestId: three.response.headers.get("x-request-id")!,
      cost: null,
      streaming: true,
    });

    // A refused request (unknown model) is audited at cost 0 and billed nothing.
    const refused = await client.chat.completions.create({
      model: "openai/no-such-model",
      messages: [{ role: "user", content: "hi" }],
    }).catch((e) => e);
    assert.ok(refused instanceof OpenAI.NotFoundError, String(refused));

    assert.deepEqual(seen.slice(0, 2).map((s) => s.cost), [CALLS[0].cost, CALLS[1].cost]);
    const spent = CALLS.reduce((sum, c) => sum + c.cost, 0n);

    // Recording is asynchronous (outbox → KV queue → ledger, audit, rollups): wait for it.
    const deadline = Date.now() + 30_000;
    while (true) {
      const v = await curl("/v1/admin/verify", admin);
      assert.equal(v.status, 200, v.text);
      if (v.body.pending_events === 0) {
        assert.equal(v.body.ok, true, v.text);
        assert.deepEqual(v.body.differences, []);
        break;
      }
      assert.ok(Date.now() < deadline, `events still pending: ${v.text}`);
      await new Promise((r) => setTimeout(r, 100));
    }

    const credits = await curl("/v1/credits", mgmt);
    assert.equal(credits.status, 200, credits.text);
    assert.equal(nanos(credits.body.balance), granted - spent);
    assert.equal(nanos(credits.body.reserved), 0n);
    assert.equal(nanos(credits.body.available), granted - spent);
    assert.equal(nanos(credits.body.total_used), spent);

    const tx = await curl("/v1/transactions?limit=1000", mgmt);
    assert.equal(tx.status, 200, tx.text);
    assert.equal(tx.body.next_cursor, null);
    const ledger = tx.body.data as { type: string; amount: string; balance_after: string }[];
    assert.deepEqual(
      ledger.map((e) => e.type).sort(),
      ["adjustment", "purchase", "usage_debit", "usage_debit", "usage_debit"],
    );
    assert.equal(ledger.reduce((s, e) => s + nanos(e.amount), 0n), granted - spent);
    assert.equal(nanos(ledger[0].balance_after), granted - spent, "newest first");
    assert.deepEqual(
      ledger.filter((e) => e.type === "usage_debit").map((e) => -nanos(e.amount)).sort(),
      CALLS.map((c) => c.cost).sort(),
    );

    const csv = await fetch(`${base}/v1/audit/export?format=csv`, {
      headers: { authorization: `Bearer ${mgmt}` },
    });
    assert.equal(csv.status, 200);
    assert.match(csv.headers.get("content-type") ?? "", /^text\/csv/);
    const [header, ...rows] = (await csv.text()).split("\r\n").filter((l) => l !== "");
    assert.equal(
      header,
      "timestamp,request_id,key_id,key_name,provider,model,prompt_tokens,completion_tokens," +
        "cached_tokens,cache_write_tokens,reasoning_tokens,cost,market_cost,latency_ms,status," +
        "streaming,client_ip,user_agent",
    );
    const cols = header.split(",");
    const audit = rows.map((r) => Object.fromEntries(csvFields(r).map((v, i) => [cols[i], v])));
    assert.equal(audit.length, 4, "one row per request, the refusal included");
    assert.equal(new Set(audit.map((r) => r.request_id)).size, 4);
    assert.equal(audit.reduce((s, r) => s + nanos(r.cost), 0n), spent);
    for (const [i, s] of seen.entries()) {
      const row = audit.find((r) => r.request_id === s.requestId);
      assert.ok(row, `an audit row for ${s.requestId}`);
      assert.equal(nanos(row.cost), CALLS[i].cost);
      if (s.cost !== null) assert.equal(nanos(row.cost), s.cost, "the cost the SDK saw");
      assert.equal(row.status, "200");
      assert.equal(row.streaming, String(s.streaming));
      assert.equal(row.key_id, created.body.id);
      assert.equal(row.model, "gpt-4o-mini");
      assert.equal(Number(row.prompt_tokens), CALLS[i].usage.prompt_tokens);
    }
    const refusal = audit.find((r) => !seen.some((s) => s.requestId === r.request_id))!;
    assert.equal(refusal.status, "404");
    assert.equal(nanos(refusal.cost), 0n);
    assert.equal(nanos(refusal.market_cost), 0n);
    for (const [i, c] of CALLS.entries()) {
      const row = audit.find((r) => r.request_id === seen[i].requestId)!;
      assert.equal(nanos(row.market_cost), c.market);
    }

    // The JSON export holds the same rows, and says why the refusal was refused.
    const exported = await curl("/v1/audit/export?format=json", mgmt);
    assert.equal(exported.status, 200, exported.text);
    assert.deepEqual(
      exported.body.map((r: Record<string, unknown>) =>
        Object.fromEntries(cols.map((c) => [c, String(r[c])]))
      ),
      audit,
    );
    assert.equal(
      exported.body.find((r: { request_id: string }) => r.request_id === refusal.request_id)
        .error_code,
      "model_not_priced",
    );

    const usageRes = await curl("/v1/usage", mgmt);
    assert.equal(usageRes.status, 200, usageRes.text);
    const summary = usageRes.body.summary;
    assert.equal(summary.requests, 3, "refusals are not billed requests");
    assert.equal(nanos(summary.cost), spent);
    assert.equal(
      summary.prompt_tokens,
      CALLS.reduce((s, c) => s + c.usage.prompt_tokens, 0),
    );
    const market = CALLS.reduce((sum, c) => sum + c.market, 0n);
    assert.equal(nanos(summary.market_cost), market);
    assert.equal(nanos(summary.savings), market - spent);
    assert.equal(summary.savings_percent, 20);

    // The key holder's own view, with the inference key.
    const own = await curl("/v1/key", key);
    assert.equal(own.status, 200, own.text);
    assert.equal(nanos(own.body.spend), spent);
    assert.equal(nanos(own.body.usage_today), spent);

    const keys = await curl("/v1/keys", mgmt);
    const listed = keys.body.data.find((k: { id: string }) => k.id === created.body.id);
    assert.equal(nanos(listed.spend), spent);

    // Only the configured KV file was used.
    assert.ok((await Deno.stat(kvPath)).isFile);

    // SIGTERM stops it cleanly.
    child.kill("SIGTERM");
    const s = await status;
    assert.equal(s.code, 0, `exit code ${s.code}; stderr:\n${err.lines.join("\n")}`);
    // No error was logged, and nothing threw (runtime notices on stderr are not errors).
    const errors = err.lines.filter((l) => /"level":"error"|^error|Uncaught/.test(l));
    assert.deepEqual(errors, [], `stderr:\n${err.lines.join("\n")}`);

    // No prompt or completion text was written: not to the logs, not to the KV files.
    assert.ok(![...out.lines, ...err.lines].some((l) => l.includes(CANARY)), "canary in the logs");
    for await (const file of Deno.readDir(dir)) {
      const bytes = await Deno.readFile(`${dir}/${file.name}`);
      assert.ok(
        !new TextDecoder("latin1").decode(bytes).includes(CANARY),
        `canary in ${file.name}`,
      );
    }
  } finally {
    if (!exited) {
      // SIGTERM first: the task runner forwards it, where SIGKILL would orphan the router.
      child.kill("SIGTERM");
      const timer = setTimeout(() => exited || child.kill("SIGKILL"), 10_000);
      await status;
      clearTimeout(timer);
    }
    await status;
    await out.done;
    await err.done;
    await openai.close();
    await Deno.remove(dir, { recursive: true });
  }
});
