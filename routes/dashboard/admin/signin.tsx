import type { PageConfig, PageCtx, PageProps } from "../../../lib/render/page.tsx";
import { safeEqual } from "../../../lib/crypto.ts";
import { allowSigninAttempt, startSession } from "../../../lib/render/session.ts";
import { adminTokenTag } from "../../../lib/auth/sessions.ts";
import { Notice } from "../../../lib/render/layout.tsx";

export const config: PageConfig = { title: "Operator sign-in", auth: "public", layout: "public" };

/** Operator sessions are short: 8 hours. */
const ADMIN_TTL_S = 8 * 3600;

export const handler = {
  GET: () => ({ data: { error: "" } }),
  async POST(ctx: PageCtx) {
    const cfg = ctx.svc.config;
    if (!await allowSigninAttempt(ctx)) {
      return { data: { error: "Too many attempts; try again in a few minutes." }, status: 429 };
    }
    if (!cfg.adminToken) {
      return { data: { error: "The admin pages are off: set ADMIN_TOKEN." }, status: 503 };
    }
    const token = String(ctx.form.get("token") ?? "");
    if (!safeEqual(token, cfg.adminToken)) {
      return { data: { error: "That token is wrong." }, status: 401 };
    }
    // Tied to this token: once the operator changes ADMIN_TOKEN, the session is refused.
    const tag = await adminTokenTag(cfg.adminToken);
    await startSession(ctx, { kind: "admin", admin_tag: tag }, ADMIN_TTL_S * 1000);
    return ctx.redirect("/dashboard/admin");
  },
};

/** The operator signs in with ADMIN_TOKEN. */
export default function AdminSignIn({ data }: PageProps<{ error: string }>) {
  return (
    <section class="card auth-card">
      <h1>Operator sign-in</h1>
      {data.error ? <Notice kind="error">{data.error}</Notice> : null}
      <form method="post" class="stack">
        <label>
          Admin token<input name="token" type="password" autocomplete="current-password" required />
        </label>
        <button type="submit">Sign in</button>
      </form>
    </section>
  );
}
