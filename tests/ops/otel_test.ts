/**
 * Operating with OpenTelemetry and Prometheus: `main.ts` started with `OTEL_DENO=true` exports its
 * spans, metrics and logs over OTLP/HTTP (JSON, as `OTEL_EXPORTER_OTLP_PROTOCOL=http/json` asks
 * Deno for; its default is protobuf) to a receiver on loopback, and serves `GET /metrics`.
 */
import assert from "node:assert/strict";
import parsePrometheusTextFormat from "parse-prometheus-text-format";
import { ADMIN_TOKEN, json } from "../_helpers.ts";
import { startFakeOpenAI } from "../_fakes/openai.ts";
import { serveLoopback } from "../_fakes/serve.ts";
import { spawnRouter } from "../_main.ts";
import { accountWithKey } from "./_ops.ts";
import type { LedgerEntry } from "../../lib/billing/types.ts";
import { verifyBooks } from "../../lib/billing/accounts.ts";

const METRICS_TOKEN = "metrics-token-0123456789";
// A prompt no telemetry may carry: the fake provider echoes it back as the completion too.
const CANARY = "canary-7f3a9c1e-prompt-text-never-exported";

/** An OTLP/HTTP receiver on loopback: every body it was sent, as received, by signal. */
function startOtlpReceiver() {
  const received: { path: string; type: string; bytes: Uint8Array }[] = [];
  const server = serveLoopback(async (req) => {
    const bytes = new Uint8Array(await req.arrayBuffer());
    received.push({
      path: new URL(req.url).pathname,
      type: req.headers.get("content-type") ?? "",
      bytes,
    });
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
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  kind: number;
  attributes: { key: string; value: OtlpValue }[];
  status?: { code?: number };
}

const valueOf = (v: OtlpValue): unknown =>
  v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : undefined) ?? v.doubleValue ??
    v.boolValue ?? v.arrayValue?.values.map(valueOf);

/** Every span in the trace exports received, with its attributes as a plain object. */
function spansOf(received: { path: string; bytes: Uint8Array }[]) {
  const out: (OtlpSpan & { attrs: Record<string, unknown> })[] = [];
  for (const r of received.filter((r) => r.path === "/v1/traces")) {
    const body = JSON.parse(new TextDecoder().decode(r.bytes));
    for (const rs of body.resourceSpans ?? []) {
      for (const ss of rs.scopeSpans ?? []) {
        for (const s of ss.spans as OtlpSpan[]) {
          out.push({
            ...s,
            attrs: Object.fromEntries(s.attributes.map((a) => [a.key, valueOf(a.value)])),
          });
        }
      }
    }
  }
  return out;
}

Deno.test("OTEL_DENO=true: the request span tree", async () => {
  const dir = await Deno.makeTempDir();
  const openai = startFakeOpenAI();
  openai.scenario = { chunks: 4 };
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
    const { key } = await accountWithKey(router.url);
    const ask = (stream: boolean) =>
      fetch(`${router.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: JSON.stringify({
          model: "gpt-4o-mini",
          messages: [{ role: "user", content: `Say ${CANARY}` }],
          max_tokens: 50,
          stream,
          ...(stream ? { stream_options: { include_usage: true } } : {}),
        }),
      });
    const plain = await json(await ask(false), 200);
    const streamed = await (await ask(true)).text();
    console.log(plain.usage, streamed.slice(-400));
    const metrics = await fetch(`${router.url}/metrics`, {
      headers: { authorization: `Bearer ${METRICS_TOKEN}` },
    });
    const text = await metrics.text();
    console.log(text.split("\n").filter((l) => l.startsWith("router_")).join("\n"));
    assert.equal((await router.stop()).code, 0);
    for (const s of spansOf(otlp.received)) {
      console.log(s.name, s.spanId, s.parentSpanId, s.kind, JSON.stringify(s.attrs));
    }
    const ledger = await Deno.openKv(kvPath);
    try {
      const rows = await Array.fromAsync(ledger.list<LedgerEntry>({ prefix: ["ledger"] }));
      console.log(rows.map((r) => r.value.amount));
      console.log(await verifyBooks(ledger, { scan: true }));
    } finally {
      ledger.close();
    }
    void parsePrometheusTextFormat;
  } finally {
    await router.stop("SIGKILL");
    await otlp.close();
    await openai.close();
    await Deno.remove(dir, { recursive: true });
  }
});
