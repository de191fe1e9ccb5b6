import { z } from "zod";
import type { PageConfig, PageCtx, PageProps } from "../lib/render/page.tsx";
import { MAX_EMAIL_CHARS } from "../lib/auth/users.ts";
import { signUp } from "../lib/onboarding.ts";
import { allowSigninAttempt, safeNext, startSession, withNext } from "../lib/render/session.ts";
import { Notice } from "../lib/render/layout.tsx";

export const config: PageConfig = { title: "Create an account", auth: "public", layout: "public" };

const schema = z.object({
  name: z.string().trim().min(1, "Your name is required").max(100),
  email: z.email("Enter a valid email address").max(
    MAX_EMAIL_CHARS,
    `The email may have at most ${MAX_EMAIL_CHARS} characters`,
  ),
  account: z.string().trim().min(1, "The organisation name is required").max(200),
  password: z.string().min(10, "The password needs at least 10 characters").max(200),
});

interface Data {
  error?: string;
  values: { name: string; email: string; account: string };
  /** Where the new user goes once the account exists (a same-site path, as after sign-in). */
  next: string;
}

export const handler = {
  GET: (ctx: PageCtx): { data: Data } => ({
    data: {
      values: { name: "", email: "", account: "" },
      next: safeNext(ctx.url.searchParams.get("next")),
    },
  }),
  async POST(ctx: PageCtx) {
    const f = Object.fromEntries(
      ["name", "email", "account", "password"].map((k) => [k, String(ctx.form.get(k) ?? "")]),
    );
    const values = { name: f.name, email: f.email, account: f.account };
    const next = safeNext(String(ctx.form.get("next") ?? ""));
    if (!await allowSigninAttempt(ctx)) {
      return {
        data: {
          values,
          next,
          error: "Too many attempts from your address; try again in a few minutes.",
        },
        status: 429,
      };
    }
    const r = schema.safeParse(f);
    if (!r.success) {
      return { data: { values, next, error: r.error.issues[0].message }, status: 400 };
    }
    const created = await signUp(ctx.svc.kv, {
      email: r.data.email,
      name: r.data.name,
      password: r.data.password,
      accountName: r.data.account,
    }, ctx.svc.now());
    if (!created) {
      return {
        data: {
          values,
          next,
          error: "An account with this email already exists: sign in instead.",
        },
        status: 409,
      };
    }
    // Whatever session the browser had ends here: the new account gets a fresh one.
    await startSession(ctx, {
      kind: "user",
      user_id: created.user.id,
      account_id: created.account.id,
    });
    return ctx.redirect(next);
  },
};

/** Sign-up: the organisation's account and its owner. */
export default function SignUp({ data }: PageProps<Data>) {
  return (
    <section class="card auth-card">
      <h1>Create an account</h1>
      {data.error ? <Notice kind="error">{data.error}</Notice> : null}
      <form method="post" class="stack">
        <input type="hidden" name="next" value={data.next} />
        <label>
          Your name<input name="name" autocomplete="name" required value={data.values.name} />
        </label>
        <label>
          Email<input
            name="email"
            type="email"
            autocomplete="email"
            required
            value={data.values.email}
          />
        </label>
        <label>
          Organisation<input
            name="account"
            autocomplete="organization"
            required
            value={data.values.account}
          />
        </label>
        <label>
          Password
          <input
            name="password"
            type="password"
            autocomplete="new-password"
            minLength={10}
            required
            aria-describedby="pw-hint"
          />
          <span id="pw-hint" class="hint">At least 10 characters.</span>
        </label>
        <button type="submit">Create account</button>
      </form>
      <p class="muted">
        Already have an account? <a href={withNext("/signin", data.next)}>Sign in</a>
      </p>
    </section>
  );
}
