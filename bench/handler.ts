/**
 * The router's own CPU per request, without the network: the Hono app is called in process
 * (`app.fetch`) with a fetch that answers every upstream call at once with a canned chat
 * completion, so what is measured is the router's work (auth, parsing, billing, recording, KV)
 * and nothing of HTTP, the load generator or the upstream. Steadier than the wrk benchmark on a
 * shared machine, so fit for comparing two versions of the router.
 *
 * Usage: deno run -A bench/handler.ts [accounts=100] [concurrency=32] [requests=10000]
 * Prints requests/s and process CPU µs per request of the measured half (after a warm-up of the
 * same size), each followed by a flush, so recording and rollups are included.
 */
import process from "node:process";
import { loadConfig } from "../lib/config.ts";
import { createApp } from "../lib/app.ts";
import { silentLogger } from "../lib/log.ts";
import { printThreadCpu, threadCpuMs } from "./threads.ts";

const accounts = Number(Deno.args[0] ?? 100);
const concurrency = Number(Deno.args[1] ?? 32);
const requests = Number(Deno.args[2] ?? 10_000);

const reply = JSON.stringify({
  id: "chatcmpl-bench",
  object: "chat.completion",
  created: 1,
  model: "gpt-4o-mini",
  choices: [{
    index: 0,
    message: { role: "assistant", content: "tok ".repeat(20).trim() },
    finish_reason: "stop",
  }],
  usage: { prompt_tokens: 12, completion_tokens: 20, total_tokens: 32 },
});
const canned = (_url: string | URL | Request, _init?: RequestInit) =>
  Promise.resolve(new Response(reply, { headers: { "content-type": "application/json" } }));
// UPSTREAM=http://127.0.0.1:PORT/v1 sends the upstream calls there instead (bench/upstream.mjs).
const upstreamUrl = Deno.env.get("UPSTREAM");

const dir = await Deno.makeTempDir(
  (await Deno.stat("/dev/shm").catch(() => null)) ? { dir: "/dev/shm" } : {},
);
const env = {
  ADMIN_TOKEN: "handler-bench-admin-token-0123",
  OPENAI_API_KEY: "sk-handler-bench",
  OPENAI_BASE_URL: upstreamUrl ?? "http://127.0.0.1:9/v1",
  KV_PATH: `${dir}/router.kv`,
};
const config = loadConfig(env);
const kv = await Deno.openKv(config.kvPath);
const router = createApp({
  kv,
  config,
  env,
  log: silentLogger,
  fetch: upstreamUrl ? fetch : canned as typeof fetch,
});

const post = (auth: string, path: string, body: string) =>
  router.app.fetch(
    new Request(`http://router${path}`, {
      method: "POST",
      // As a server hands it over: with the body's length.
      headers: {
        authorization: `Bearer ${auth}`,
        "content-type": "application/json",
        "content-length": String(new TextEncoder().encode(body).length),
      },
      body,
    }),
  );
const call = async (auth: string, path: string, body: unknown) => {
  const res = await post(auth, path, JSON.stringify(body));
  const json = await res.json();
  if (res.status >= 300) throw new Error(JSON.stringify(json));
  return json;
};
const keys: string[] = [];
for (let i = 0; i < accounts; i++) {
  const a = await call(env.ADMIN_TOKEN, "/v1/admin/accounts", { name: `H${i}` });
  await call(env.ADMIN_TOKEN, `/v1/admin/accounts/${a.id}/adjustments`, {
    amount: "1000",
    reason: "bench",
  });
  keys.push((await call(a.management_key, "/v1/keys", { name: "k" })).key);
}

const body = JSON.stringify({
  model: "openai/gpt-4o-mini",
  messages: [{ role: "user", content: "hi" }],
  max_tokens: 64,
});
async function load() {
  let next = 0;
  const worker = async () => {
    while (next < requests) {
      const res = await post(keys[next++ % keys.length], "/v1/chat/completions", body);
      await res.arrayBuffer();
      if (res.status !== 200) throw new Error(`status ${res.status}`);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  await router.flush();
}

await load(); // warm-up
const threads0 = threadCpuMs();
const cpu0 = process.cpuUsage();
const t0 = performance.now();
await load();
const cpu = process.cpuUsage(cpu0);
const seconds = (performance.now() - t0) / 1000;
console.log(
  `accounts=${accounts} c=${concurrency} requests=${requests}: ${
    (requests / seconds).toFixed(0)
  } req/s, CPU ${((cpu.user + cpu.system) / requests).toFixed(0)} µs/req`,
);
printThreadCpu(threads0, requests);
await router.close();
kv.close();
await Deno.remove(dir, { recursive: true });
