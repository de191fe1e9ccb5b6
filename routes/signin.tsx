import type { PageConfig, PageCtx, PageProps } from "../lib/render/page.tsx";
import {
  getUserByEmail,
  hashPassword,
  listAccountsByUser,
  MAX_EMAIL_CHARS,
  type PasswordHash,
  verifyPassword,
} from "../lib/auth/users.ts";
import {
  allowEmailAttempt,
  allowSigninAttempt,
  safeNext,
  startSession,
  withNext,
} from "../lib/render/session.ts";
import { Notice } from "../lib/render/layout.tsx";

export const config: PageConfig = { title: "Sign in", auth: "public", layout: "public" };

interface Data {
  error?: string;
  email: string;
  next: string;
}

const TOO_MANY = "Too many sign-in attempts; try again in a few minutes.";

// Unknown emails still pay for one hash, so timing does not tell which emails exist.
let decoy: Promise<PasswordHash> | null = null;

export const handler = {
  GET: (ctx: PageCtx): { data: Data } => ({
    data: { email: "", next: safeNext(ctx.url.searchParams.get("next")) },
  }),
  async POST(ctx: PageCtx) {
    const email = String(ctx.form.get("email") ?? "").trim();
    const password = String(ctx.form.get("password") ?? "");
    const next = safeNext(String(ctx.form.get("next") ?? ""));
    // No user has a longer email (sign-up refuses them): answered before anything is read.
    if (email.length > MAX_EMAIL_CHARS) {
      return { data: { email: "", next, error: "The email or password is wrong." }, status: 400 };
    }
    const { kv } = ctx.svc;
    // Too many attempts from this address, or too many failures of this email from any: one answer.
    const tooMany = { data: { email, next, error: TOO_MANY }, status: 429 };
    if (!await allowSigninAttempt(ctx)) return tooMany;
    const attempt = await allowEmailAttempt(ctx, email);
    if (!attempt.ok) return tooMany;
    const user = email ? await getUserByEmail(kv, email) : null;
    const ok = user
      ? await verifyPassword(password, user.password)
      : (await verifyPassword(password, await (decoy ??= hashPassword("decoy"))), false);
    if (!user || !ok) {
      return { data: { email, next, error: "The email or password is wrong." }, status: 401 };
    }
    await attempt.succeeded();
    const memberships = await listAccountsByUser(kv, user.id);
    const home = memberships.find((m) => m.role === "owner") ?? memberships[0];
    if (!home) {
      return { data: { email, next, error: "This user belongs to no account." }, status: 403 };
    }
    await startSession(ctx, { kind: "user", user_id: user.id, account_id: home.account_id });
    return ctx.redirect(next);
  },
};

/** Sign-in with email and password. */
export default function SignIn({ data }: PageProps<Data>) {
  return (
    <section class="card auth-card">
      <h1>Sign in</h1>
      {data.error ? <Notice kind="error">{data.error}</Notice> : null}
      <form method="post" class="stack">
        <input type="hidden" name="next" value={data.next} />
        <label>
          Email<input
            name="email"
            type="email"
            autocomplete="username"
            required
            value={data.email}
          />
        </label>
        <label>
          Password<input name="password" type="password" autocomplete="current-password" required />
        </label>
        <button type="submit">Sign in</button>
      </form>
      <p class="muted">
        New here? <a href={withNext("/signup", data.next)}>Create an account</a> · Operator?{" "}
        <a href="/dashboard/admin/signin">Admin sign-in</a>
      </p>
    </section>
  );
}
