import type { PageConfig, PageCtx } from "../lib/render/page.tsx";
import { deleteSession, sessionCookie } from "../lib/auth/sessions.ts";

export const config: PageConfig = { title: "Sign out", auth: "session", layout: "public" };

export const handler = {
  async POST(ctx: PageCtx) {
    await deleteSession(ctx.svc.kv, ctx.viewer?.token);
    ctx.c.header("set-cookie", sessionCookie(ctx.siteUrl, "", 0));
    return ctx.redirect("/signin");
  },
};

export default function SignOut() {
  return null;
}
