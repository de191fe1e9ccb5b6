import assert from "node:assert/strict";
import { addressAllowed, addressPolicy, destination } from "../../../lib/webhooks/addresses.ts";

const PRODUCTION = addressPolicy({ billingMode: "production", webhookAllowPrivateUrls: false });
const DEVELOPMENT = addressPolicy({ billingMode: "development", webhookAllowPrivateUrls: false });
const ALLOWED = addressPolicy({ billingMode: "production", webhookAllowPrivateUrls: true });

const LOOPBACK = ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "0:0:0:0:0:0:0:1"];
const PRIVATE = [
  "10.0.0.1",
  "172.16.5.4",
  "172.31.255.255",
  "192.168.1.1",
  "100.64.0.1",
  "0.0.0.0",
  "169.254.169.254",
  "224.0.0.1",
  "255.255.255.255",
  "fc00::1",
  "fd12:3456::1",
  "fe80::1",
  "FE80::abcd",
  "ff02::1",
  "::",
  // IPv4 inside IPv6: mapped, compatible, translated, NAT64, 6to4, Teredo.
  "::ffff:10.0.0.1",
  "::ffff:a9fe:a9fe",
  "::10.0.0.1",
  "::ffff:0:10.0.0.1",
  "64:ff9b::10.0.0.1",
  "2002:a00:1::1",
  "2001:0:4136:e378::1",
];
const PUBLIC = ["93.184.216.34", "8.8.8.8", "172.32.0.1", "2606:4700::1111", "::ffff:8.8.8.8"];

Deno.test("addressAllowed: production refuses loopback, private and link-local, in every form", () => {
  for (const ip of [...LOOPBACK, ...PRIVATE]) {
    assert.equal(addressAllowed(ip, PRODUCTION), false, ip);
  }
  for (const ip of PUBLIC) assert.equal(addressAllowed(ip, PRODUCTION), true, ip);
  assert.equal(addressAllowed("not an address", PRODUCTION), false);
  assert.equal(addressAllowed("010.0.0.1", ALLOWED), false, "an ambiguous form is no address");
});

Deno.test("addressAllowed: development allows loopback only; WEBHOOK_ALLOW_PRIVATE_URLS all", () => {
  for (const ip of LOOPBACK) assert.equal(addressAllowed(ip, DEVELOPMENT), true, ip);
  for (const ip of PRIVATE) assert.equal(addressAllowed(ip, DEVELOPMENT), false, ip);
  for (const ip of [...LOOPBACK, ...PRIVATE, ...PUBLIC]) {
    assert.equal(addressAllowed(ip, ALLOWED), true, ip);
  }
});

Deno.test("destination: IP literals in any URL form, and names by every address they resolve to", async () => {
  const signal = new AbortController().signal;
  const dns: Record<string, string[]> = {
    "public.example": ["93.184.216.34", "2606:4700::1111"],
    "mixed.example": ["93.184.216.34", "10.0.0.7"],
  };
  const resolve = (host: string) =>
    dns[host] ? Promise.resolve(dns[host]) : Promise.reject(new Error("NXDOMAIN"));
  const check = (url: string) => destination(new URL(url), PRODUCTION, resolve, signal);

  assert.deepEqual(await check("https://public.example/hook"), {
    ok: true,
    addresses: ["93.184.216.34", "2606:4700::1111"],
  });
  // One inside address refuses the host, whatever else it resolves to.
  assert.deepEqual(await check("https://mixed.example/hook"), {
    ok: false,
    reason: "address_refused",
  });
  assert.deepEqual(await check("https://missing.example/"), { ok: false, reason: "unresolvable" });
  // The URL parser's IPv4 forms (decimal, hex, short) and bracketed IPv6 are addresses too.
  for (
    const url of [
      "http://2130706433/",
      "http://0x7f.1/",
      "http://127.1/",
      "http://[::ffff:7f00:1]/",
      "http://[fe80::1]:8080/",
      "http://169.254.169.254/latest/meta-data",
    ]
  ) {
    assert.deepEqual(await check(url), { ok: false, reason: "address_refused" }, url);
  }
  assert.deepEqual(await check("http://8.8.8.8:8080/x"), { ok: true, addresses: ["8.8.8.8"] });
});
