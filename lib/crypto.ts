/**
 * The router's cryptographic helpers, in one place: secret hashes (keys, sessions, idempotency
 * bodies, Stripe keys, static assets), random tokens, constant-time comparison, PBKDF2, and the
 * seal that keeps a secret in a stored reply.
 */
import { Buffer } from "node:buffer";
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";

/**
 * SHA-256 of a text, hex: the only form a key or session token is stored in.
 *
 * @example
 * ```ts
 * await hashSecret("er-abc"); // 64 hex digits
 * ```
 */
export function hashSecret(secret: string): Promise<string> {
  // Synchronous node:crypto: every request hashes its key, and WebCrypto's async digest costs
  // more than the hash (bench/README.md, "Measurements behind constants").
  return Promise.resolve(createHash("sha256").update(secret).digest("hex"));
}

/**
 * `bytes` random bytes (256 bits by default), base64url without padding.
 *
 * @example
 * ```ts
 * "er-" + randomToken(32); // a new key's secret
 * ```
 */
export function randomToken(bytes = 32): string {
  const b = crypto.getRandomValues(new Uint8Array(bytes));
  return btoa(String.fromCharCode(...b)).replaceAll("+", "-").replaceAll("/", "_").replace(
    /=+$/,
    "",
  );
}

/** Constant-time equality of two byte strings (their lengths aside). */
export function safeEqualBytes(x: Uint8Array, y: Uint8Array): boolean {
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}

/**
 * Constant-time string equality (of their UTF-8 bytes).
 *
 * @example
 * ```ts
 * safeEqual(presented, config.adminToken); // true only for the same token
 * ```
 */
export function safeEqual(a: string, b: string): boolean {
  return safeEqualBytes(new TextEncoder().encode(a), new TextEncoder().encode(b));
}

/**
 * PBKDF2-SHA256 of a secret: 256 bits.
 *
 * @example
 * ```ts
 * await pbkdf2Sha256("correct horse", salt, 600_000); // Uint8Array(32)
 * ```
 */
export async function pbkdf2Sha256(
  secret: string,
  salt: Uint8Array,
  iterations: number,
): Promise<Uint8Array> {
  const material = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(secret),
    "PBKDF2",
    false,
    ["deriveBits"],
  );
  const bits = await crypto.subtle.deriveBits(
    { name: "PBKDF2", hash: "SHA-256", salt: salt as BufferSource, iterations },
    material,
    256,
  );
  return new Uint8Array(bits);
}

/**
 * Seals secrets (AES-256-GCM) under a key derived from `secret` for one `purpose`: only a holder of
 * the same secret opens them.
 *
 * @example
 * ```ts
 * const s = sealer("idempotent management key", adminToken);
 * s.open(s.seal("er-…")); // "er-…"; null under another token
 * ```
 */
export function sealer(purpose: string, secret: string) {
  const key = createHash("sha256").update(`${purpose}\0${secret}`).digest();
  return {
    seal(text: string): string {
      const iv = randomBytes(12);
      const c = createCipheriv("aes-256-gcm", key, iv);
      const ct = Buffer.concat([c.update(text, "utf8"), c.final()]);
      return [iv, ct, c.getAuthTag()].map((b) => b.toString("base64url")).join(".");
    },
    /** The text, or null when it was sealed under another secret (or altered). */
    open(sealed: string): string | null {
      try {
        const [iv, ct, tag] = sealed.split(".").map((p) => Buffer.from(p, "base64url"));
        const d = createDecipheriv("aes-256-gcm", key, iv);
        d.setAuthTag(tag);
        return Buffer.concat([d.update(ct), d.final()]).toString("utf8");
      } catch {
        return null;
      }
    },
  };
}
