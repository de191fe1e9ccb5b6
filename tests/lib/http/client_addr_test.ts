import assert from "node:assert/strict";
import { clientAddress, trustingProxies } from "../../../lib/http/client_addr.ts";

Deno.test("clientAddress reads X-Forwarded-For only from a trusted proxy, right to left", () => {
  const trusted = new Set(["10.0.0.2", "10.0.0.3", "2001:db8::9"]);
  // Not a trusted proxy: the header is the client's own word, ignored.
  assert.equal(clientAddress("198.51.100.4", "203.0.113.7", trusted), "198.51.100.4");
  // A trusted proxy without the header: the proxy itself is all that is known.
  assert.equal(clientAddress("10.0.0.2", null, trusted), "10.0.0.2");
  assert.equal(clientAddress("10.0.0.2", "203.0.113.7", trusted), "203.0.113.7");
  // Entries a client prepends are left of the one the proxy appended: never chosen.
  assert.equal(clientAddress("10.0.0.2", "1.1.1.1, 6.6.6.6, 203.0.113.7", trusted), "203.0.113.7");
  // A chain of trusted proxies is walked past; the first untrusted hop is the client.
  assert.equal(clientAddress("10.0.0.2", "203.0.113.7, 10.0.0.3", trusted), "203.0.113.7");
  assert.equal(clientAddress("10.0.0.2", "10.0.0.3,10.0.0.2", trusted), "10.0.0.3", "all proxies");
  // Ports and brackets some proxies write; IPv6 sockets and entries in any spelling.
  assert.equal(clientAddress("10.0.0.2", "203.0.113.7:4711", trusted), "203.0.113.7");
  assert.equal(clientAddress("2001:DB8:0::9", "[2001:db8::77]:443", trusted), "2001:db8::77");
  assert.equal(clientAddress("::ffff:10.0.0.2", "203.0.113.7", trusted), "203.0.113.7");
  // A malformed entry stops the walk at the last hop that was an address.
  assert.equal(clientAddress("10.0.0.2", "203.0.113.7, garbage", trusted), "10.0.0.2");
  assert.equal(clientAddress("10.0.0.2", "garbage, 10.0.0.3", trusted), "10.0.0.3");
});

Deno.test("trustingProxies hands the handler the client's address; without proxies, the same handler", async () => {
  const seen: string[] = [];
  const handler: Deno.ServeHandler = (_req, info) => {
    seen.push((info.remoteAddr as Deno.NetAddr).hostname);
    return new Response(null, { status: 204 });
  };
  assert.equal(trustingProxies(handler, []), handler);
  const wrapped = trustingProxies(handler, ["127.0.0.1"]);
  const info = (hostname: string): Deno.ServeHandlerInfo => ({
    remoteAddr: { transport: "tcp", hostname, port: 5000 },
    completed: Promise.resolve(),
  });
  const req = new Request("http://router.test/", { headers: { "x-forwarded-for": "203.0.113.7" } });
  await wrapped(req, info("127.0.0.1"));
  await wrapped(req, info("192.0.2.1"));
  assert.deepEqual(seen, ["203.0.113.7", "192.0.2.1"]);
});
