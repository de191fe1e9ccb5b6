/**
 * Onboarding: a new account with its first management key, and a person signing up (the account,
 * its key, the user and the owner membership), each in one atomic.
 */
import { newId } from "./ids.ts";
import { commitRetrying } from "./kv/util.ts";
import { createKey } from "./auth/keys.ts";
import {
  type Membership,
  newUser,
  type User,
  writeMembership,
  writeNewUser,
} from "./auth/users.ts";
import { writeNewAccount } from "./billing/accounts.ts";
import type { Account } from "./billing/types.ts";

/**
 * Creates an account, its balance record and its first management key in one atomic; `extra`
 * adds more to that atomic (an idempotency record, the owner's user). Null when the atomic's
 * checks failed (the id taken, or whatever `extra` checked).
 *
 * @example
 * ```ts
 * const made = await createAccount(kv, { name: "Acme", email: null }, svc.now());
 * made?.secret; // the management key, shown once
 * ```
 */
export async function createAccount(
  kv: Deno.Kv,
  spec: { name: string; email: string | null },
  now: number,
  extra?: (atomic: Deno.AtomicOperation, result: { account: Account; secret: string }) => void,
): Promise<{ account: Account; secret: string } | null> {
  const account: Account = {
    id: newId("acct"),
    name: spec.name,
    email: spec.email,
    created_at: new Date(now).toISOString(),
  };
  const atomic = kv.atomic();
  writeNewAccount(atomic, account, now);
  const { secret } = await createKey(
    kv,
    account.id,
    { name: "Management", scope: "management" },
    now,
    atomic,
  );
  extra?.(atomic, { account, secret });
  const res = await commitRetrying(atomic);
  return res.ok ? { account, secret } : null;
}

/**
 * Signs a person up: the account, its balance and first management key, the user and the owner
 * membership, all in one atomic. Null when the email is already taken.
 *
 * @example
 * ```ts
 * const r = await signUp(kv, { email, name: "Ada", password, accountName: "Acme" }, svc.now());
 * ```
 */
export async function signUp(
  kv: Deno.Kv,
  spec: { email: string; name: string; password: string; accountName: string },
  now: number,
): Promise<{ user: User; account: Account } | null> {
  const user = await newUser(spec, now);
  const created = await createAccount(
    kv,
    { name: spec.accountName, email: user.email },
    now,
    (atomic, r) => {
      writeNewUser(atomic, user);
      const owner: Membership = {
        account_id: r.account.id,
        user_id: user.id,
        role: "owner",
        created_at: user.created_at,
      };
      writeMembership(atomic, owner);
    },
  );
  return created ? { user, account: created.account } : null;
}
