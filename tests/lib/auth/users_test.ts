import assert from "node:assert/strict";
import {
  addMember,
  getUserByEmail,
  hashPassword,
  listAccountsByUser,
  listMembersByAccount,
  PBKDF2_ITERATIONS,
  removeMember,
  verifyPassword,
} from "../../../lib/auth/users.ts";
import { getBalance } from "../../../lib/billing/accounts.ts";
import { signUp } from "../../../lib/onboarding.ts";

Deno.test("hashPassword uses PBKDF2-SHA256 with at least 600,000 iterations and a fresh salt", async () => {
  assert.ok(PBKDF2_ITERATIONS >= 600_000);
  const a = await hashPassword("correct horse battery");
  const b = await hashPassword("correct horse battery");
  assert.equal(a.alg, "pbkdf2-sha256");
  assert.equal(a.iterations, PBKDF2_ITERATIONS);
  assert.notEqual(a.salt, b.salt, "a salt per hash");
  assert.notEqual(a.hash, b.hash);
  assert.ok(!JSON.stringify(a).includes("horse"), "the password itself is never stored");
});

Deno.test("verifyPassword accepts the password and refuses any other", async () => {
  const h = await hashPassword("s3cret-password", 1000);
  assert.equal(await verifyPassword("s3cret-password", h), true);
  assert.equal(await verifyPassword("s3cret-passworD", h), false);
  assert.equal(await verifyPassword("", h), false);
});

Deno.test("signUp creates the account, its owner and balance; an email signs up once", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const r = await signUp(kv, {
      email: "Ada@Example.com",
      name: "Ada",
      password: "long enough password",
      accountName: "Analytical",
    }, Date.now());
    assert.ok(r);
    assert.equal(r.user.email, "ada@example.com");
    assert.equal((await getUserByEmail(kv, "ADA@example.com"))?.id, r.user.id);
    assert.deepEqual((await getBalance(kv, r.account.id)).balance, 0n);
    const accounts = await listAccountsByUser(kv, r.user.id);
    assert.deepEqual(accounts.map((m) => [m.account_id, m.role]), [[r.account.id, "owner"]]);
    const again = await signUp(kv, {
      email: "ada@example.com",
      name: "Other",
      password: "another password",
      accountName: "Other",
    }, Date.now());
    assert.equal(again, null);

    const bob = await signUp(kv, {
      email: "bob@example.com",
      name: "Bob",
      password: "bobs password!",
      accountName: "Bob's",
    }, Date.now());
    assert.ok(bob);
    assert.equal(await addMember(kv, r.account.id, bob.user.id, "member", Date.now()), true);
    assert.equal(await addMember(kv, r.account.id, bob.user.id, "member", Date.now()), false);
    const members = await listMembersByAccount(kv, r.account.id);
    assert.deepEqual(members.map((m) => m.membership.role).sort(), ["member", "owner"]);
    assert.equal(await removeMember(kv, r.account.id, r.user.id), false, "the owner stays");
    assert.equal(await removeMember(kv, r.account.id, bob.user.id), true);
    assert.equal((await listAccountsByUser(kv, bob.user.id)).length, 1);
  } finally {
    kv.close();
  }
});
