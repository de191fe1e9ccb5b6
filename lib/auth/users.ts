import { newId } from "../ids.ts";
import { pbkdf2Sha256, safeEqualBytes } from "../crypto.ts";
import {
  memberKey,
  membersPrefix,
  userAccountKey,
  userAccountsPrefix,
  userEmailKey,
  userKey,
} from "../kv/schema.ts";
import { getAll } from "../kv/util.ts";

/** PBKDF2-SHA256 iterations for new password hashes (OWASP 2023 guidance: at least 600,000). */
export const PBKDF2_ITERATIONS = 600_000;

/** A stored password: PBKDF2-SHA256 with a per-user random salt. */
export interface PasswordHash {
  alg: "pbkdf2-sha256";
  iterations: number;
  salt: string;
  hash: string;
}

export interface User {
  id: string;
  email: string;
  name: string;
  password: PasswordHash;
  created_at: string;
}

export type Role = "owner" | "member";

export interface Membership {
  account_id: string;
  user_id: string;
  role: Role;
  created_at: string;
}

const b64 = (b: Uint8Array) => btoa(String.fromCharCode(...b));
const unb64 = (s: string) => Uint8Array.from(atob(s), (ch) => ch.charCodeAt(0));

/**
 * Hashes a password with PBKDF2-SHA256 and a fresh 128-bit salt.
 *
 * @example
 * ```ts
 * const stored = await hashPassword("correct horse battery");
 * ```
 */
export async function hashPassword(
  password: string,
  iterations = PBKDF2_ITERATIONS,
): Promise<PasswordHash> {
  const salt = crypto.getRandomValues(new Uint8Array(16));
  return {
    alg: "pbkdf2-sha256",
    iterations,
    salt: b64(salt),
    hash: b64(await pbkdf2Sha256(password, salt, iterations)),
  };
}

/**
 * Checks a password against its stored hash, comparing in constant time.
 *
 * @example
 * ```ts
 * await verifyPassword("correct horse battery", user.password); // true
 * ```
 */
export async function verifyPassword(password: string, stored: PasswordHash): Promise<boolean> {
  const got = await pbkdf2Sha256(password, unb64(stored.salt), stored.iterations);
  return safeEqualBytes(got, unb64(stored.hash));
}

/** The longest email address (RFC 5321: a path of 256 less its brackets); longer are refused. */
export const MAX_EMAIL_CHARS = 254;

/** Emails compare case-insensitively. */
export const normalizeEmail = (email: string) => email.trim().toLowerCase();

/**
 * A user by id, or null.
 *
 * @example
 * ```ts
 * const user = await getUser(kv, session.user_id);
 * ```
 */
export async function getUser(kv: Deno.Kv, id: string): Promise<User | null> {
  return (await kv.get<User>(userKey(id))).value;
}

/**
 * The user with an email (compared case-insensitively), or null.
 *
 * @example
 * ```ts
 * await getUserByEmail(kv, "ADA@example.com"); // emails compare case-insensitively
 * ```
 */
export async function getUserByEmail(kv: Deno.Kv, email: string): Promise<User | null> {
  const id = (await kv.get<string>(userEmailKey(normalizeEmail(email)))).value;
  return id ? await getUser(kv, id) : null;
}

/**
 * A new user record with the password hashed (PBKDF2), to be written with `writeNewUser`.
 *
 * @example
 * ```ts
 * const user = await newUser({ email: "ada@example.com", name: "Ada", password }, now);
 * ```
 */
export async function newUser(
  spec: { email: string; name: string; password: string },
  now: number,
): Promise<User> {
  return {
    id: newId("user"),
    email: normalizeEmail(spec.email),
    name: spec.name,
    password: await hashPassword(spec.password),
    created_at: new Date(now).toISOString(),
  };
}

/** Adds a new user to `atomic`, which then fails when another user has the email. */
export function writeNewUser(atomic: Deno.AtomicOperation, user: User) {
  atomic.check({ key: userEmailKey(user.email), versionstamp: null })
    .set(userEmailKey(user.email), user.id)
    .set(userKey(user.id), user);
}

/** Adds a membership to `atomic`, under the account and under the user. */
export function writeMembership(atomic: Deno.AtomicOperation, m: Membership) {
  atomic.set(memberKey(m.account_id, m.user_id), m).set(userAccountKey(m.user_id, m.account_id), m);
}

/**
 * The membership of a user in an account, or null.
 *
 * @example
 * ```ts
 * const m = await getMembership(kv, accountId, userId); // m?.role: "owner" | "member"
 * ```
 */
export async function getMembership(
  kv: Deno.Kv,
  accountId: string,
  userId: string,
): Promise<Membership | null> {
  return (await kv.get<Membership>(memberKey(accountId, userId))).value;
}

/**
 * The accounts a user belongs to, with the role in each.
 *
 * @example
 * ```ts
 * const memberships = await listAccountsByUser(kv, userId);
 * ```
 */
export async function listAccountsByUser(kv: Deno.Kv, userId: string): Promise<Membership[]> {
  const out: Membership[] = [];
  for await (const e of kv.list<Membership>({ prefix: userAccountsPrefix(userId) })) {
    out.push(e.value);
  }
  return out;
}

/**
 * The members of an account with their users, oldest first.
 *
 * @example
 * ```ts
 * const members = await listMembersByAccount(kv, accountId); // [{ membership, user }, …]
 * ```
 */
export async function listMembersByAccount(
  kv: Deno.Kv,
  accountId: string,
): Promise<{ membership: Membership; user: User }[]> {
  const ms: Membership[] = [];
  for await (const e of kv.list<Membership>({ prefix: membersPrefix(accountId) })) ms.push(e.value);
  const users = await getAll<User>(kv, ms.map((m) => userKey(m.user_id)));
  return ms.flatMap((m, i) => users[i].value ? [{ membership: m, user: users[i].value! }] : []);
}

/**
 * Adds an existing user to an account; false when already a member.
 *
 * @example
 * ```ts
 * await addMember(kv, accountId, user.id, "member", svc.now()); // false if already one
 * ```
 */
export async function addMember(
  kv: Deno.Kv,
  accountId: string,
  userId: string,
  role: Role,
  now: number,
): Promise<boolean> {
  const m: Membership = {
    account_id: accountId,
    user_id: userId,
    role,
    created_at: new Date(now).toISOString(),
  };
  const atomic = kv.atomic().check({ key: memberKey(accountId, userId), versionstamp: null });
  writeMembership(atomic, m);
  return (await atomic.commit()).ok;
}

/**
 * Removes a member (never the owner).
 *
 * @example
 * ```ts
 * await removeMember(kv, accountId, userId); // false for the owner
 * ```
 */
export async function removeMember(kv: Deno.Kv, accountId: string, userId: string) {
  const entry = await kv.get<Membership>(memberKey(accountId, userId));
  if (!entry.value || entry.value.role === "owner") return false;
  const res = await kv.atomic().check(entry).delete(memberKey(accountId, userId))
    .delete(userAccountKey(userId, accountId)).commit();
  return res.ok;
}
