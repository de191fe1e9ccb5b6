/**
 * Operating with OpenTelemetry and Prometheus: `main.ts` started with `OTEL_DENO=true` exports its
 * spans, metrics and logs over OTLP/HTTP (JSON, as `OTEL_EXPORTER_OTLP_PROTOCOL=http/json` asks
 * Deno for; its default is protobuf) to a receiver on loopback, and serves `GET /metrics`.
 */
import assert from "node:assert/strict";
import parsePrometheusTextFormat from "parse-prometheus-text-format";
import { ADMIN_TOKEN, json } from "../../_helpers.ts";
import { startFakeOpenAI } from "../../_fakes/openai.ts";
import { serveLoopback } from "../../_fakes/serve.ts";
import { spawnRouter } from "../../_main.ts";
import { accountWithKey } from "./_ops.ts";
import type { LedgerEntry } from "../../../lib/billing/types.ts";
import { verifyBooks } from "../../../lib/billing/accounts.ts";
import { parseUsd } from "../../../lib/money.ts";

const METRICS_TOKEN = "metrics-token-0123456789";
// A prompt no telemetry may carry: the fake provider echoes it back as the completion too.
const CANARY = "canary-7f3a9c1e-prompt-text-never-exported";

/** An OTLP/HTTP receiver on loopback: every body it was sent, as received, with its path. */
function startOtlpReceiver() {
  const received: { path: string; bytes: Uint8Array }[] = [];
  const server = serveLoopback(async (req) => {
    received.push({ path: new URL(req.url).pathname, bytes: await req.bytes() });
    return Response.json({});
  });
  return { url: server.origin, received, close: () => server.close() };
}

interface OtlpValue {
  stringValue?: string;
  intValue?: string | number;
  doubleValue?: number;
  boolValue?: boolean;
  arrayValue?: { values: OtlpValue[] };
}
type OtlpAttributes = { key: string; value: OtlpValue }[];
interface Span {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  kind: number;
  attrs: Record<string, unknown>;
}

const INTERNAL = 1;
const SERVER = 2;
const CLIENT = 3;

const valueOf = (v: OtlpValue): unknown =>
  v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : undefined) ?? v.doubleValue ??
    v.boolValue ?? v.arrayValue?.values.map(valueOf);
const attributes = (a: OtlpAttributes) =>
  Object.fromEntries(a.map(({ key, value }) => [key, valueOf(value)]));

/** The JSON bodies received for one signal (`traces`, `metrics`, `logs`). */
const bodiesOf = (received: { path: string; bytes: Uint8Array }[], signal: string) =>
  received.filter((r) => r.path === `/v1/${signal}`).map((r) =>
    JSON.parse(new TextDecoder().decode(r.bytes))
  );

/** Every span exported, its attributes as a plain object. */
function spansOf(received: { path: string; bytes: Uint8Array }[]): Span[] {
  const out: Span[] = [];
  for (const body of bodiesOf(received, "traces")) {
    for (const rs of body.resourceSpans ?? []) {
      for (const ss of rs.scopeSpans ?? []) {
        for (const s of ss.spans) out.push({ ...s, attrs: attributes(s.attributes) });
      }
    }
  }
  return out;
}

/** Σ over the data points of one OpenTelemetry sum (a counter), every export's last. */
function otlpCounter(received: { path: string; bytes: Uint8Array }[], name: string): number {
  let last = 0;
  for (const body of bodiesOf(received, "metrics")) {
    for (const rm of body.resourceMetrics ?? []) {
      for (const sm of rm.scopeMetrics ?? []) {
        for (const m of sm.metrics) {
          if (m.name !== name) continue;
          // Cumulative: each export holds the totals so far.
          last = (m.sum.dataPoints as { asDouble?: number; asInt?: string }[])
            .reduce((s, p) => s + (p.asDouble ?? Number(p.asInt ?? 0)), 0);
        }
      }
    }
  }
  return last;
}

interface Family {
  name: string;
  type: string;
  metrics: { labels?: Record<string, string>; value?: string }[];
}

/** The value of one series of a parsed exposition (undefined when it has none). */
function series(families: Family[], name: string, labels: Record<string, string> = {}) {
  const f = families.find((f) => f.name === name);
  const m = f?.metrics.find((m) =>
    Object.entries(labels).every(([k, v]) => m.labels?.[k] === v) &&
    Object.keys(m.labels ?? {}).length === Object.keys(labels).length
  );
  return m?.value === undefined ? undefined : Number(m.value);
}

Deno.test("OTEL_DENO=true: each request's span tree with GenAI and cost attributes, no prompt in any export or log; /metrics agrees with the ledger", async () => {
  const dir = await Deno.makeTempDir();
  const openai = startFakeOpenAI();
  // The canary's reply comes whole in one chunk: an export of a chunk would carry all of it.
  openai.scenario = { chunks: 1 };
  const otlp = startOtlpReceiver();
  const kvPath = `${dir}/router.kv`;
  const router = await spawnRouter({
    KV_PATH: kvPath,
    ADMIN_TOKEN,
    METRICS_TOKEN,
    OPENAI_API_KEY: "sk-upstream-test",
    OPENAI_BASE_URL: openai.url,
    OTEL_DENO: "true",
    OTEL_SERVICE_NAME: "enterprise-router",
    OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url,
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
  });
  try {
    const { accountId, key, keyId } = await accountWithKey(router.url);
    const ask = (content: string, stream: boolean, model = "gpt-4o-mini") =>
      fetch(`${router.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: JSON.stringify({
          model,
          messages: [{ role: "user", content }],
          max_tokens: 50,
          stream,
          ...(stream ? { stream_options: { include_usage: true } } : {}),
        }),
      });
    /** A streamed reply's text and its usage chunk. */
    const readStream = async (res: Response) => {
      const text = await res.text();
      const line = text.split("\n").find((l) => l.includes('"usage":{'))!;
      return { text, usage: JSON.parse(line.slice("data: ".length)).usage };
    };

    const plainRes = await ask(`Say ${CANARY}`, false);
    const plain = await json(plainRes, 200);
    const streamedRes = await ask(`Say ${CANARY}`, true);
    const streamed = await readStream(streamedRes);
    assert.match(plain.choices[0].message.content, new RegExp(CANARY), "the canary went through");
    assert.match(streamed.text, new RegExp(CANARY));
    // More requests of other lengths, and one naming a model nobody offers.
    openai.scenario = { chunks: 4 };
    const told = [plain.usage, streamed.usage];
    for (let i = 1; i <= 4; i++) {
      const content = "more words ".repeat(i * 7);
      if (i % 2) told.push((await json(await ask(content, false), 200)).usage);
      else told.push((await readStream(await ask(content, true))).usage);
    }
    await json(await ask("x", false, "openai/no-such-model-anywhere"), 404);

    // GET /metrics: its token or the admin token, nothing else.
    const scrape = (auth?: string) =>
      fetch(`${router.url}/metrics`, auth ? { headers: { authorization: `Bearer ${auth}` } } : {});
    assert.equal((await json(await scrape(), 401)).error.code, "invalid_api_key");
    assert.equal(
      (await json(await scrape("not-the-token-0123456789"), 401)).error.code,
      "invalid_api_key",
    );
    assert.equal((await json(await scrape(key), 401)).error.code, "invalid_api_key");
    const byAdmin = await scrape(ADMIN_TOKEN);
    assert.equal(byAdmin.status, 200);
    await byAdmin.body?.cancel();
    const res = await scrape(METRICS_TOKEN);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
    const exposition = await res.text();
    const families: Family[] = parsePrometheusTextFormat(exposition);
    const gpt = { provider: "openai", model: "gpt-4o-mini" };
    assert.equal(series(families, "router_requests_total", { ...gpt, status: "200" }), 6);
    assert.equal(
      series(families, "router_requests_total", { provider: "openai", model: "", status: "404" }),
      1,
      "a model nobody offers is no label value",
    );
    assert.equal(
      series(families, "router_request_errors_total", {
        provider: "openai",
        model: "",
        code: "model_not_priced",
      }),
      1,
    );
    const sum = (f: (u: Record<string, number>) => number) => told.reduce((s, u) => s + f(u), 0);
    assert.equal(
      series(families, "router_tokens_total", { ...gpt, kind: "input" }),
      sum((u) => u.prompt_tokens),
    );
    assert.equal(
      series(families, "router_tokens_total", { ...gpt, kind: "output" }),
      sum((u) => u.completion_tokens),
    );
    const costSeries = series(families, "router_cost_usd_total", gpt)!;
    const marketSeries = series(families, "router_market_cost_usd_total", gpt)!;
    // Histograms and the gauges read from KV are there too.
    const names = new Set(families.map((f) => f.name));
    for (
      const name of [
        "router_upstream_duration_seconds",
        "router_time_to_first_token_seconds",
        "router_kv_commit_duration_seconds",
        "router_outbox_backlog",
        "router_outbox_oldest_age_seconds",
        "router_holds_outstanding",
        "router_leases_open",
        "router_streams_live",
        "router_actor_commits_total",
      ]
    ) assert.ok(names.has(name), `${name} is exposed`);
    assert.equal(
      families.find((f) => f.name === "router_upstream_duration_seconds")?.type,
      "HISTOGRAM",
    );

    assert.equal((await router.stop()).code, 0);

    // The cost counter is Σ of the ledger's usage debits, to the nano-dollar: the exposition's
    // number is the double nearest the exact total, so ×1e9 rounds back to it (exact below $9M).
    const kv = await Deno.openKv(kvPath);
    let debits = 0n;
    try {
      for await (const e of kv.list<LedgerEntry>({ prefix: ["ledger", accountId] })) {
        if (e.value.type === "usage_debit") debits -= e.value.amount;
      }
      assert.ok((await verifyBooks(kv, { scan: true })).ok);
    } finally {
      kv.close();
    }
    assert.ok(debits > 0n);
    assert.equal(BigInt(Math.round(costSeries * 1e9)), debits);
    const toldCost = told.reduce((s, u) => s + parseUsd(u.cost.toFixed(9))!, 0n);
    assert.equal(debits, toldCost, "and what the clients were told");
    const toldMarket = told.reduce((s, u) => s + parseUsd(u.market_cost.toFixed(9))!, 0n);
    assert.equal(BigInt(Math.round(marketSeries * 1e9)), toldMarket);
    // OpenTelemetry got the same counters (flushed at exit), summed as floats.
    assert.equal(
      BigInt(Math.round(otlpCounter(otlp.received, "router_cost_usd_total") * 1e9)),
      debits,
    );
    assert.equal(
      otlpCounter(otlp.received, "router_tokens_total"),
      Number(series(families, "router_tokens_total", { ...gpt, kind: "input" })) +
        Number(series(families, "router_tokens_total", { ...gpt, kind: "output" })),
    );

    // The span trees, from Deno's HTTP server span down.
    const spans = spansOf(otlp.received);
    const byId = new Map(spans.map((s) => [s.spanId, s]));
    for (
      const [res, usage, streaming] of [
        [plainRes, plain.usage, false],
        [streamedRes, streamed.usage, true],
      ] as const
    ) {
      const id = res.headers.get("x-request-id");
      const top = spans.find((s) => s.attrs["router.request.id"] === id);
      assert.ok(top, `the span of request ${id}`);
      assert.equal(top.name, "chat gpt-4o-mini");
      assert.equal(top.kind, INTERNAL);
      const server = byId.get(top.parentSpanId);
      assert.equal(server?.kind, SERVER, "a child of Deno's HTTP server span");
      assert.equal(server?.attrs["url.path"], "/v1/chat/completions");
      assert.deepEqual(
        {
          operation: top.attrs["gen_ai.operation.name"],
          provider: top.attrs["gen_ai.provider.name"],
          requested: top.attrs["gen_ai.request.model"],
          answered: top.attrs["gen_ai.response.model"],
          input: top.attrs["gen_ai.usage.input_tokens"],
          output: top.attrs["gen_ai.usage.output_tokens"],
          cached: top.attrs["gen_ai.usage.cache_read.input_tokens"],
          finish: top.attrs["gen_ai.response.finish_reasons"],
          account: top.attrs["router.account.id"],
          key: top.attrs["router.key.id"],
          cost: top.attrs["router.cost_usd"],
          market: top.attrs["router.market_cost_usd"],
          status: top.attrs["router.status"],
          http: top.attrs["http.response.status_code"],
          streaming: top.attrs["router.streaming"],
        },
        {
          operation: "chat",
          provider: "openai",
          requested: "gpt-4o-mini",
          answered: "gpt-4o-mini",
          input: usage.prompt_tokens,
          output: usage.completion_tokens,
          cached: 0,
          finish: ["stop"],
          account: accountId,
          key: keyId,
          cost: usage.cost,
          market: usage.market_cost,
          status: 200,
          http: 200,
          streaming,
        },
      );
      if (streaming) assert.equal(typeof top.attrs["router.time_to_first_token_ms"], "number");
      const children = spans.filter((s) => s.parentSpanId === top.spanId);
      assert.deepEqual(children.map((s) => s.name).sort(), [
        "chat gpt-4o-mini",
        "hold",
        "key lookup",
        "settle",
      ]);
      assert.ok(children.every((s) => s.traceId === top.traceId));
      const attempt = children.find((s) => s.name === "chat gpt-4o-mini")!;
      assert.equal(attempt.kind, CLIENT);
      assert.equal(attempt.attrs["gen_ai.provider.name"], "openai");
      assert.equal(attempt.attrs["router.attempt"], 1);
      // Deno's own span of the fetch to the provider, under the attempt.
      const fetchSpan = spans.find((s) => s.parentSpanId === attempt.spanId);
      assert.equal(fetchSpan?.attrs["url.full"], `${openai.url}/chat/completions`);
      const settle = children.find((s) => s.name === "settle")!;
      assert.equal(settle.attrs["router.cost_usd"], usage.cost);
      assert.ok(Number(children.find((s) => s.name === "hold")!.attrs["router.hold_usd"]) > 0);
    }

    // The prompt (and the completion echoing it) is in nothing exported nor logged.
    assert.ok(bodiesOf(otlp.received, "logs").length > 0, "logs were exported");
    assert.ok(bodiesOf(otlp.received, "metrics").length > 0, "metrics were exported");
    const raw = new TextDecoder().decode(
      new Uint8Array(otlp.received.flatMap((r) => [...r.bytes])),
    );
    assert.ok(raw.includes(accountId), "the search would find a string that was exported");
    assert.ok(!raw.includes(CANARY), "the prompt was exported");
    assert.ok(!router.output().includes(CANARY), "the prompt was logged");
    assert.ok(!exposition.includes(CANARY));
  } finally {
    await router.stop("SIGKILL");
    await otlp.close();
    await openai.close();
    await Deno.remove(dir, { recursive: true });
  }
});
