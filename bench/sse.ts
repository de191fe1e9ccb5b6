/**
 * The SSE usage tap alone: passes the bench upstream's stream (20 content deltas, a finish chunk,
 * the usage chunk and `[DONE]`, one chunk per event) through `tapStream`, `translateSse` (each
 * event mapped to itself) and, for comparison, a plain pass-through pipe, many times. Prints µs
 * per stream and per chunk (wall time of one busy thread: run it on a quiet machine, compare
 * within one run) and the process's CPU time per chunk (steadier on a shared machine).
 * Usage: deno run -A bench/sse.ts [streams=20000]
 */
import process from "node:process";
import { translateSse } from "../lib/sse.ts";
import { tapStream } from "../lib/proxy/tap.ts";
import { CHAT_ENDING } from "../lib/formats/chat.ts";

const N = Number(Deno.args[0] ?? 20_000);
const enc = new TextEncoder();
const chunk = (choices: unknown[], extra = {}) =>
  enc.encode(
    "data: " + JSON.stringify({
      id: "chatcmpl-bench",
      object: "chat.completion.chunk",
      created: 1,
      model: "gpt-4o-mini",
      choices,
      ...extra,
    }) + "\n\n",
  );
const events = [chunk([{ index: 0, delta: { role: "assistant", content: "" } }])];
for (let i = 0; i < 20; i++) {
  events.push(chunk([{ index: 0, delta: { content: "tok " }, finish_reason: null }]));
}
events.push(chunk([{ index: 0, delta: {}, finish_reason: "stop" }]));
events.push(chunk([], { usage: { prompt_tokens: 12, completion_tokens: 20, total_tokens: 32 } }));
events.push(enc.encode("data: [DONE]\n\n"));

// Like a fetch body: a byte stream whose default reads allocate 64 KiB each.
const source = () => {
  let i = 0;
  return new ReadableStream({
    type: "bytes",
    autoAllocateChunkSize: 64 * 1024,
    pull(ctrl) {
      const req = ctrl.byobRequest!;
      if (i === events.length) {
        ctrl.close();
        req.respond(0);
        return;
      }
      const e = events[i++];
      new Uint8Array(req.view!.buffer, req.view!.byteOffset).set(e);
      req.respond(e.length);
    },
  }) as ReadableStream<Uint8Array>;
};

async function drain(s: ReadableStream<Uint8Array>) {
  const r = s.getReader();
  while (!(await r.read()).done);
}

const kept: string[] = [];
const usageLine = `data: ${JSON.stringify({ usage: { cost: 0.0001 } })}`;
const targets: [string, () => ReadableStream<Uint8Array>][] = [
  ["pass-through", () => source().pipeThrough(new TransformStream())],
  ["translateSse", () => translateSse(source(), (data) => [data], () => [])],
  ["tapStream", () =>
    tapStream(source(), {
      // As billStream's for chat: usage and failures watched for, what went out kept.
      ending: CHAT_ENDING,
      watch: /"usage"\s*:\s*\{|"error"/,
      onEvent: () => Promise.resolve({ final: true, out: usageLine }),
      onEnd: () => Promise.resolve(),
      delivered: (text) => kept.push(text) > 1000 && (kept.length = 0),
    }, { idleMs: 60_000, maxStreamMs: 3_600_000 })],
];

for (const [name, make] of targets) {
  for (let i = 0; i < 1000; i++) await drain(make()); // warm-up
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  for (let i = 0; i < N; i++) await drain(make());
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const us = (ms * 1000) / N;
  const cpuUs = (cpu.user + cpu.system) / N;
  console.log(
    `${name.padEnd(13)} ${us.toFixed(1)} µs per stream, ${
      (us / events.length).toFixed(2)
    } µs per chunk; CPU ${(cpuUs / events.length).toFixed(2)} µs per chunk`,
  );
}
