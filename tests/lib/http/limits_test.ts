import assert from "node:assert/strict";
import { assertNothingWritten, json, kvSnapshot, startRouter } from "../../_helpers.ts";
import { RawConn } from "../../_raw.ts";
import { MAX_URL_BYTES } from "../../../lib/http/limits.ts";
import type { Logger } from "../../../lib/log.ts";

/** A urlencoded form of exactly `bytes` bytes. */
const formOf = (bytes: number) => {
  const head = "name=&email=&account=&password=&pad=";
  return head + "x".repeat(bytes - head.length);
};

/** A request written by hand: `body` sent chunked (in 1,000-byte chunks), then the answer read. */
async function chunked(url: string, path: string, headers: string, body: string) {
  const c = await RawConn.open(url);
  let wire = `POST ${path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n${headers}\r\n`;
  for (let i = 0; i < body.length; i += 1000) {
    const part = body.slice(i, i + 1000);
    wire += `${part.length.toString(16)}\r\n${part}\r\n`;
  }
  await c.send(wire + "0\r\n\r\n");
  const res = await c.readResponse(5000);
  c.close();
  return res!;
}

Deno.test("a page's form over PAGE_BODY_BYTES is 413 before it is read, by its length or as it streams", async () => {
  const t = await startRouter({ env: { PAGE_BODY_BYTES: "4096" } });
  try {
    const post = (body: string, accept = "text/html") =>
      fetch(`${t.url}/signup`, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", accept },
        body,
      });
    // At the limit the form is read: the page's own rules answer it.
    const read = await post(formOf(4096));
    assert.equal(read.status, 400);
    assert.match(await read.text(), /<!DOCTYPE html>/);
    // One byte more, declared: refused at once, as a page to a browser, as JSON otherwise.
    const before = await kvSnapshot(t);
    const page = await post(formOf(4097));
    assert.equal(page.status, 413);
    assert.match(page.headers.get("content-type") ?? "", /text\/html/);
    assert.match(await page.text(), /over 4096 bytes/);
    const api = await post(formOf(4097), "*/*");
    assert.equal((await json(api, 413)).error.code, "request_too_large");
    // Sent chunked, with no length to refuse: counted as it comes, refused past the limit.
    const streamed = await chunked(
      t.url,
      "/signup",
      "Content-Type: application/x-www-form-urlencoded\r\n",
      formOf(20_000),
    );
    assert.equal(streamed.status, 413);
    assert.match(streamed.body, /over 4096 bytes/);
    assert.equal(streamed.headers.get("connection"), "close");
    assertNothingWritten(before, await kvSnapshot(t), 0);
  } finally {
    await t.close();
  }
});

Deno.test("the Stripe webhook's own body limit is checked before its signature", async () => {
  const t = await startRouter({
    env: {
      STRIPE_WEBHOOK_SECRET: "whsec_test_secret",
      MAX_BODY_BYTES: "4096",
      WEBHOOK_BODY_BYTES: "8192",
    },
  });
  try {
    const deliver = (body: string) =>
      fetch(`${t.url}/v1/stripe/webhook`, {
        method: "POST",
        headers: { "stripe-signature": "t=1,v1=00" },
        body,
      });
    const event = (bytes: number) => `{"pad":"${"x".repeat(bytes - 10)}"}`;
    const before = await kvSnapshot(t);
    // Within the webhook's limit (over the API's): read, and refused for its signature.
    assert.equal((await json(await deliver(event(8192)), 400)).error.code, "invalid_signature");
    // Over it: refused for its size, the signature never checked.
    const big = await json(await deliver(event(8193)), 413);
    assert.equal(big.error.code, "request_too_large");
    assert.match(big.error.message, /8192 bytes/);
    const streamed = await chunked(t.url, "/v1/stripe/webhook", "", event(2_000_000));
    assert.equal(streamed.status, 413);
    assert.equal(JSON.parse(streamed.body).error.code, "request_too_large");
    assertNothingWritten(before, await kvSnapshot(t), 0);
  } finally {
    await t.close();
  }
});

Deno.test("a URL over MAX_URL_BYTES is 414 with the JSON error (a page to a browser), audited for a known key", async () => {
  const t = await startRouter();
  try {
    const path = (bytes: number) => {
      const head = "/healthz?pad=";
      return head + "x".repeat(bytes - head.length);
    };
    const ok = await fetch(t.url + path(MAX_URL_BYTES));
    assert.deepEqual(await json(ok, 200), { ok: true });
    const { key, mgmt } = await t.account("1");
    const before = await kvSnapshot(t);
    const inference = await fetch(`${t.url}/v1/chat/completions?${"x".repeat(MAX_URL_BYTES)}`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}` },
      body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] }),
    });
    assert.equal((await json(inference, 414)).error.code, "uri_too_long");
    assert.equal(t.openai.requests.length, 0);
    const api = await json(await fetch(`${t.url}/v1/models?${"x".repeat(MAX_URL_BYTES)}`), 414);
    assert.deepEqual(api.error, {
      message: `The request URL is over ${MAX_URL_BYTES} bytes`,
      type: "invalid_request_error",
      code: "uri_too_long",
    });
    await json(await fetch(t.url + path(MAX_URL_BYTES + 1)), 414);
    const page = await fetch(t.url + path(MAX_URL_BYTES + 1), { headers: { accept: "text/html" } });
    assert.equal(page.status, 414);
    assert.match(await page.text(), /<!DOCTYPE html>.*over 16384 bytes/s);
    // Refused before the route: the inference request of a known key leaves its audit row only.
    assertNothingWritten(before, await kvSnapshot(t), 1);
    const [row] = (await json(await t.call(mgmt, "GET", "/v1/audit"), 200)).data;
    assert.deepEqual([row.status, row.error_code, row.cost], [414, "uri_too_long", "0"]);
  } finally {
    await t.close();
  }
});

Deno.test("a body that stops arriving is 408 after BODY_TIMEOUT_MS, audited, its connection marked to close", async () => {
  const t = await startRouter({
    env: { BODY_TIMEOUT_MS: "300", STRIPE_WEBHOOK_SECRET: "whsec_test_secret" },
  });
  try {
    const { key, mgmt } = await t.account("1");
    const before = await kvSnapshot(t);
    // A body that sends a little, then nothing; cancelled by the router when it gives up.
    let cancelled = 0;
    const send = async (path: string, headers: Record<string, string>) => {
      let source!: ReadableStreamDefaultController<Uint8Array>;
      const body = new ReadableStream<Uint8Array>({
        start: (c) => {
          source = c;
          c.enqueue(new TextEncoder().encode('{"model":'));
        },
        cancel: () => void cancelled++,
      });
      // Bounded here too: a router without a deadline would wait for ever.
      const giveUp = setTimeout(() => source.error(new Error("no answer in 10 s")), 10_000);
      try {
        return await t.router.app.request(path, {
          method: "POST",
          headers: { "content-length": "1000", ...headers },
          body,
          duplex: "half",
        } as RequestInit);
      } finally {
        clearTimeout(giveUp);
      }
    };
    for (
      const [path, headers] of [
        ["/v1/chat/completions", { authorization: `Bearer ${key}` }],
        ["/v1/stripe/webhook", { "stripe-signature": "t=1,v1=00" }],
      ] as const
    ) {
      const res = await send(path, headers);
      assert.equal(res.headers.get("connection"), "close");
      const body = await json(res, 408);
      assert.deepEqual(body.error, {
        message: "The request body did not arrive within 300 ms",
        type: "invalid_request_error",
        code: "request_timeout",
      });
    }
    assert.equal(cancelled, 2, "the router let go of both bodies");
    await t.router.flush();
    const [row] = (await json(await t.call(mgmt, "GET", "/v1/audit"), 200)).data;
    assert.deepEqual([row.status, row.error_code, row.cost], [408, "request_timeout", "0"]);
    // The inference request's audit row; the webhook's delivery recorded nothing.
    assertNothingWritten(before, await kvSnapshot(t), 1);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("an upload the client drops is audited 499 client_disconnected and logged at info", async () => {
  const lines: { level: string; msg: string; fields: Record<string, unknown> }[] = [];
  const log: Logger = (level, msg, fields = {}) => lines.push({ level, msg, fields });
  const t = await startRouter({ log });
  try {
    const { key, mgmt } = await t.account("1");
    const before = await kvSnapshot(t);
    const c = await RawConn.open(t.url);
    await c.send(
      `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\n` +
        `Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"model":"gpt-4o-mini",`,
    );
    // Gone before the rest of its body.
    c.close();
    let row: Record<string, unknown> | undefined;
    for (let i = 0; i < 100 && !row; i++) {
      await new Promise((r) => setTimeout(r, 50));
      await t.router.flush();
      row = (await json(await t.call(mgmt, "GET", "/v1/audit"), 200)).data[0];
    }
    assert.ok(row, "the dropped upload has its audit row");
    assert.deepEqual([row.status, row.error_code, row.cost], [499, "client_disconnected", "0"]);
    assert.equal(t.openai.requests.length, 0);
    const dropped = lines.filter((l) => l.msg === "client disconnected during the upload");
    assert.equal(dropped.length, 1);
    assert.equal(dropped[0].level, "info");
    assert.equal(dropped[0].fields.path, "/v1/chat/completions");
    assert.deepEqual(lines.filter((l) => l.level !== "info"), [], "nothing logged as an error");
    assertNothingWritten(before, await kvSnapshot(t), 1);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});
