/**
 * The stack's ceiling: a bare pass-through Hono proxy on Deno that forwards each request to the
 * upstream unchanged and streams the reply back, with no parsing, auth or billing.
 *
 * Usage: UPSTREAM=http://127.0.0.1:PORT deno run -A bench/proxy.ts PORT
 */
import { Hono } from "hono";

const upstream = Deno.env.get("UPSTREAM");
if (!upstream) throw new Error("UPSTREAM is not set");

const HOP = ["host", "connection", "content-length", "transfer-encoding", "keep-alive"];

const app = new Hono();
app.all("*", async (c) => {
  const req = c.req.raw;
  const url = new URL(req.url);
  const headers = new Headers(req.headers);
  for (const h of HOP) headers.delete(h);
  const res = await fetch(upstream + url.pathname + url.search, {
    method: req.method,
    headers,
    // Small JSON bodies: buffering is cheaper than a chunked upload of the stream.
    body: req.method === "GET" || req.method === "HEAD" ? undefined : await req.arrayBuffer(),
  });
  const out = new Headers(res.headers);
  for (const h of HOP) out.delete(h);
  return new Response(res.body, { status: res.status, headers: out });
});

Deno.serve({
  port: Number(Deno.args[0] ?? 0),
  hostname: "127.0.0.1",
  onListen: ({ port }) => console.log(`listening ${port}`),
}, app.fetch);
