import assert from "node:assert/strict";
import { canonicalIp, canonicalProxy, signinClient, trustedProxies } from "../../lib/net.ts";
import { clientAddress } from "../../lib/http/client_addr.ts";

Deno.test("canonicalIp accepts IPv4 and IPv6 in one canonical form, and nothing else", () => {
  assert.equal(canonicalIp("10.0.0.1"), "10.0.0.1");
  assert.equal(canonicalIp(" 192.168.1.20 "), "192.168.1.20");
  assert.equal(canonicalIp("2001:DB8:0:0::1"), "2001:db8::1");
  assert.equal(canonicalIp("[::1]"), "::1");
  assert.equal(canonicalIp("::ffff:10.0.0.1"), "10.0.0.1", "IPv4-mapped IPv6 is the IPv4 address");
  for (
    const bad of [
      "",
      "proxy.internal",
      "10.0.0",
      "10.0.0.256",
      "010.0.0.1",
      "10.0.0.0/8",
      "1::2::3",
      "fe80::1%eth0",
      "::g",
    ]
  ) {
    assert.equal(canonicalIp(bad), null, bad);
  }
});

Deno.test("canonicalProxy takes addresses and CIDR ranges, host bits cleared", () => {
  for (
    const [given, canonical] of [
      ["10.0.0.2", "10.0.0.2"],
      ["10.1.2.3/8", "10.0.0.0/8"],
      ["172.16.0.0/12", "172.16.0.0/12"],
      ["203.0.113.7/32", "203.0.113.7/32"],
      ["0.0.0.0/0", "0.0.0.0/0"],
      ["2001:DB8:0:0:1::/32", "2001:db8::/32"],
      ["2001:db8:abcd:12ff::/60", "2001:db8:abcd:12f0::/60"],
      ["::/0", "::/0"],
      ["::ffff:10.0.0.0/104", "10.0.0.0/8"],
      [" fd00::1/8 ", "fd00::/8"],
    ]
  ) {
    assert.equal(canonicalProxy(given), canonical, given);
  }
  for (
    const bad of [
      "10.0.0.0/33",
      "10.0.0.0/",
      "10.0.0.0/08",
      "10.0.0.0/-1",
      "10.0.0.0/8/8",
      "2001:db8::/129",
      "::ffff:10.0.0.0/95",
      "proxy.internal/8",
      "/8",
    ]
  ) {
    assert.equal(canonicalProxy(bad), null, bad);
  }
});

Deno.test("trusted proxy ranges match every address inside them and none outside", () => {
  const trusted = trustedProxies(["10.0.0.0/8", "192.168.1.0/25", "2001:db8::/32", "198.51.100.9"]);
  for (
    const inside of ["10.0.0.0", "10.255.255.255", "192.168.1.127", "2001:db8::1", "198.51.100.9"]
  ) {
    assert.equal(trusted.has(inside), true, inside);
  }
  assert.equal(trusted.has("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"), true);
  for (
    const outside of ["11.0.0.0", "9.255.255.255", "192.168.1.128", "2001:db9::", "198.51.100.8"]
  ) {
    assert.equal(trusted.has(outside), false, outside);
  }
  // Families never match each other: ::a00:1 holds the bytes of 10.0.0.1 but is IPv6.
  assert.equal(trusted.has("::a00:1"), false);
  // Behind a load balancer from a range, the forwarded client is found the same way.
  assert.equal(clientAddress("10.20.30.40", "203.0.113.7, 10.9.9.9", trusted), "203.0.113.7");
  assert.equal(clientAddress("11.0.0.1", "203.0.113.7", trusted), "11.0.0.1");
  assert.equal(trustedProxies(["0.0.0.0/0"]).has("8.8.8.8"), true);
  assert.equal(trustedProxies(["0.0.0.0/0"]).has("::1"), false);
});

Deno.test("signinClient is an IPv4 address itself, an IPv6 address its /64", () => {
  assert.equal(signinClient("203.0.113.7"), "203.0.113.7");
  assert.equal(signinClient("::ffff:203.0.113.7"), "203.0.113.7");
  assert.equal(signinClient("2001:DB8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
  assert.equal(signinClient("[2001:db8::1]"), "2001:db8::/64");
  assert.equal(signinClient("::1"), "::/64");
  assert.equal(signinClient("unknown"), "unknown");
});
