/**
 * A minimal, fast stand-in for OpenAI's chat completions API, run under Node in its own process so
 * that it does not share an event loop with the gateway being measured. Answers every POST to a
 * path ending in /chat/completions: JSON with usage, or (with "stream":true in the body) an SSE
 * stream of 20 content deltas, a finish chunk, the usage chunk and [DONE].
 *
 * Usage: node bench/upstream.mjs PORT   (prints "listening PORT" once ready; PORT 0 picks one)
 */
import { createServer } from "node:http";

const DELTAS = 20;
const usage = { prompt_tokens: 12, completion_tokens: DELTAS, total_tokens: 12 + DELTAS };
const created = Math.floor(Date.now() / 1000);

function jsonReply(model) {
  return JSON.stringify({
    id: "chatcmpl-bench",
    object: "chat.completion",
    created,
    model,
    choices: [{
      index: 0,
      message: { role: "assistant", content: "tok ".repeat(DELTAS).trim() },
      finish_reason: "stop",
    }],
    usage,
  });
}

function sseEvents(model) {
  const chunk = (choices, extra = {}) =>
    "data: " +
    JSON.stringify({
      id: "chatcmpl-bench",
      object: "chat.completion.chunk",
      created,
      model,
      choices,
      ...extra,
    }) + "\n\n";
  const events = [chunk([{ index: 0, delta: { role: "assistant", content: "" } }])];
  for (let i = 0; i < DELTAS; i++) {
    events.push(chunk([{ index: 0, delta: { content: "tok " }, finish_reason: null }]));
  }
  events.push(chunk([{ index: 0, delta: {}, finish_reason: "stop" }]));
  events.push(chunk([], { usage }));
  events.push("data: [DONE]\n\n");
  return events;
}

// Replies depend only on the model name: build them once per model.
const cache = new Map();
function replies(model) {
  let r = cache.get(model);
  if (!r) {
    r = { json: Buffer.from(jsonReply(model)), sse: sseEvents(model).map((e) => Buffer.from(e)) };
    cache.set(model, r);
  }
  return r;
}

const server = createServer((req, res) => {
  const parts = [];
  req.on("data", (d) => parts.push(d));
  req.on("end", () => {
    if (req.method !== "POST" || !req.url.endsWith("/chat/completions")) {
      res.writeHead(404, { "content-type": "application/json" });
      res.end('{"error":{"message":"not found"}}');
      return;
    }
    const body = Buffer.concat(parts).toString();
    const m = /"model"\s*:\s*"([^"]*)"/.exec(body);
    const r = replies(m ? m[1] : "gpt-4o-mini");
    if (!/"stream"\s*:\s*true/.test(body)) {
      res.writeHead(200, { "content-type": "application/json", "content-length": r.json.length });
      res.end(r.json);
      return;
    }
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    // One write per event, as a provider sends them; the socket may still coalesce them.
    for (const e of r.sse) res.write(e);
    res.end();
  });
});
server.keepAliveTimeout = 60_000;
server.listen(Number(process.argv[2] ?? 0), "127.0.0.1", () => {
  console.log(`listening ${server.address().port}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
