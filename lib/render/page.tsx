/**
 * Fresh's page conventions on Hono: a route module pairs `export const handler` (GET/POST
 * returning data or a Response) with a default page component; `mountPage` signs the viewer in,
 * guards forms against CSRF, and renders the page with its layout, islands and boot script.
 */
import type { Context, Hono } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { ComponentChildren, VNode } from "preact";
import type { AppEnv, Services } from "../services.ts";
import {
  adminSessionValid,
  checkCsrf,
  getSession,
  type Session,
  sessionToken,
} from "../auth/sessions.ts";
import { getMembership, getUser, listAccountsByUser, type Role, type User } from "../auth/users.ts";
import { getAccount } from "../billing/accounts.ts";
import type { Account } from "../billing/types.ts";
import { renderWithIslands, scriptJson } from "./island.tsx";
import { ApiError } from "../errors.ts";
import { assetUrl } from "./static.ts";
import { AdminShell, DashboardShell, PublicShell } from "./layout.tsx";
import { type ActiveAlert, activeAlerts } from "../billing/alerts.ts";

/** Who is looking: the session, and for a user session the user and the current account. */
export interface Viewer {
  session: Session;
  token: string;
  user: User | null;
  account: Account | null;
  role: Role | null;
  accounts: { id: string; name: string }[];
}

export interface PageCtx {
  c: Context<AppEnv>;
  svc: Services;
  url: URL;
  viewer: Viewer | null;
  /** The site's public URL (PUBLIC_URL behind a proxy, else the request's): decides Secure cookies. */
  siteUrl: string;
  /** The posted form (POST only; its CSRF check has passed). */
  form: FormData;
  redirect(to: string): Response;
}

export type PageResult<T> = Response | { data: T; status?: number };
export type PageHandler<T> = (ctx: PageCtx) => PageResult<T> | Promise<PageResult<T>>;
export interface Handlers<T> {
  GET?: PageHandler<T>;
  POST?: PageHandler<T>;
}

export interface PageProps<T> {
  data: T;
  url: URL;
  viewer: Viewer | null;
}

/** A page's place: its title, who may see it, and which layout and nav entry it uses. */
export interface PageConfig {
  title: string;
  /** "session": any signed-in session (user or operator). */
  auth: "public" | "user" | "admin" | "session";
  layout: "public" | "dashboard" | "admin";
  nav?: string;
}

export interface PageModule<T> {
  config: PageConfig;
  handler: Handlers<T>;
  default: (props: PageProps<T>) => VNode | null;
}

async function loadViewer(c: Context<AppEnv>): Promise<Viewer | null> {
  const svc = c.get("svc");
  const token = sessionToken(c.req.raw, svc.config.publicUrl ?? c.req.url);
  const session = await getSession(svc.kv, token, svc.now());
  if (!session || !token) return null;
  if (session.kind === "admin") {
    // An operator session opened with another ADMIN_TOKEN than this process's is refused (left
    // to expire: during a rolling restart another process may still hold the token it names).
    if (!await adminSessionValid(session, svc.config.adminToken)) return null;
    return { session, token, user: null, account: null, role: null, accounts: [] };
  }
  const user = session.user_id ? await getUser(svc.kv, session.user_id) : null;
  if (!user) return null;
  const membership = session.account_id
    ? await getMembership(svc.kv, session.account_id, user.id)
    : null;
  const account = membership ? await getAccount(svc.kv, membership.account_id) : null;
  const memberships = await listAccountsByUser(svc.kv, user.id);
  const accounts = await Promise.all(
    memberships.map(async (m) => ({
      id: m.account_id,
      name: (await getAccount(svc.kv, m.account_id))?.name ?? m.account_id,
    })),
  );
  return { session, token, user, account, role: membership?.role ?? null, accounts };
}

/** Whether a request without a session comes from this origin (sign-in and sign-up forms). */
function sameOrigin(c: Context<AppEnv>): boolean {
  const site = c.req.header("sec-fetch-site");
  if (site !== undefined && site !== "same-origin") return false;
  const origin = c.req.header("origin");
  return origin === undefined || origin === new URL(c.req.url).origin || origin === publicOrigin(c);
}

const publicOrigin = (c: Context<AppEnv>) => {
  const u = c.get("svc").config.publicUrl;
  return u ? new URL(u).origin : undefined;
};

const SECURITY_HEADERS = {
  "content-type": "text/html; charset=utf-8",
  "cache-control": "no-store",
  "x-frame-options": "DENY",
  "x-content-type-options": "nosniff",
  "referrer-policy": "same-origin",
  "content-security-policy":
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
};

/** Renders a whole HTML document; the boot script and island props only when islands are used. */
export async function renderDocument(
  title: string,
  body: VNode,
  status = 200,
): Promise<Response> {
  const { html, islands } = renderWithIslands(body);
  const css = await assetUrl("app.css");
  let tail = "";
  if (islands.length) {
    const js = await assetUrl("build/client.js");
    tail = `<script id="__islands" type="application/json">${scriptJson(islands)}</script>` +
      (js ? `<script type="module" src="${js}"></script>` : "");
  }
  const doc = `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">` +
    `<meta name="viewport" content="width=device-width, initial-scale=1">` +
    `<title>${escapeHtml(title)} · Enterprise Router</title>` +
    `<link rel="icon" href="/favicon.ico" type="image/svg+xml">` +
    `<link rel="stylesheet" href="${css}"></head><body>${html}${tail}</body></html>`;
  return new Response(doc, { status, headers: SECURITY_HEADERS });
}

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

function shell(
  cfg: PageConfig,
  viewer: Viewer | null,
  children: ComponentChildren,
  alerts: readonly ActiveAlert[] = [],
) {
  if (cfg.layout === "dashboard" && viewer) {
    return (
      <DashboardShell viewer={viewer} active={cfg.nav ?? ""} title={cfg.title} alerts={alerts}>
        {children}
      </DashboardShell>
    );
  }
  if (cfg.layout === "admin" && viewer) {
    return (
      <AdminShell viewer={viewer} active={cfg.nav ?? ""} title={cfg.title}>{children}</AdminShell>
    );
  }
  return <PublicShell>{children}</PublicShell>;
}

/**
 * A plain error page in the page's layout.
 *
 * @example
 * ```ts
 * return errorPage(config, viewer, 404, "There is no such page.");
 * ```
 */
export function errorPage(
  cfg: PageConfig,
  viewer: Viewer | null,
  status: number,
  message: string,
) {
  return renderDocument(
    status === 404 ? "Not found" : "Error",
    shell(
      cfg,
      viewer,
      <div class="card error-state" role="alert">
        <h2>{status === 404 ? "Not found" : "Something went wrong"}</h2>
        <p>{message}</p>
      </div>,
    ),
    status,
  );
}

/**
 * Mounts a route module on `path` (GET and, when the handler has one, POST).
 *
 * @example
 * ```ts
 * mountPage(app, "/dashboard/keys", keysPage); // as pageRoutes mounts each generated page
 * ```
 */
export function mountPage<T>(app: Hono<AppEnv>, path: string, mod: PageModule<T>) {
  const cfg = mod.config;
  app.on(["GET", "HEAD", "POST"], path, async (c) => {
    const svc = c.get("svc");
    // Pages show account data, and sign-in's redirect carries the session cookie: never cached.
    c.header("cache-control", "no-store");
    const url = new URL(c.req.url);
    const viewer = await loadViewer(c);
    if (cfg.auth === "user" && (!viewer || viewer.session.kind !== "user" || !viewer.account)) {
      return c.redirect(`/signin?next=${encodeURIComponent(url.pathname + url.search)}`, 303);
    }
    if (cfg.auth === "session" && !viewer) return c.redirect("/signin", 303);
    if (cfg.auth === "admin" && viewer?.session.kind !== "admin") {
      return c.redirect("/dashboard/admin/signin", 303);
    }
    // HEAD is answered as GET (the server drops the body).
    const method = (c.req.method === "HEAD" ? "GET" : c.req.method) as "GET" | "POST";
    const h = mod.handler[method];
    if (!h) return errorPage(cfg, viewer, 405, `${method} is not allowed here.`);
    let form = new FormData();
    if (method === "POST") {
      try {
        form = await c.req.formData();
      } catch (e) {
        // Past the form limit, too slow, or the client gone: the body's own answer.
        if (e instanceof ApiError) return errorPage(cfg, viewer, e.status, e.message);
        return errorPage(cfg, viewer, 400, "The form could not be read.");
      }
      const token = form.get("_csrf");
      const origins = publicOrigin(c) ? [publicOrigin(c)!] : [];
      const ok = cfg.auth === "public" ? sameOrigin(c) : viewer !== null &&
        checkCsrf(c.req.raw, viewer.session, typeof token === "string" ? token : null, origins);
      if (!ok) {
        return errorPage(cfg, viewer, 403, "Cross-site request refused.");
      }
    }
    const ctx: PageCtx = {
      c,
      svc,
      url,
      viewer,
      siteUrl: svc.config.publicUrl ?? c.req.url,
      form,
      redirect: (to) => c.redirect(to, 303),
    };
    const r = await h(ctx);
    if (r instanceof Response) return r;
    const Page = mod.default;
    // The account's active alerts, as a banner on every dashboard page.
    const alerts = cfg.layout === "dashboard" && viewer?.account
      ? await activeAlerts(svc, viewer.account.id)
      : [];
    const res = await renderDocument(
      cfg.title,
      shell(cfg, viewer, <Page data={r.data} url={url} viewer={viewer} />, alerts),
      r.status ?? 200,
    );
    // Through the context, so headers a handler set (Retry-After) are kept.
    return c.body(
      await res.text(),
      res.status as ContentfulStatusCode,
      Object.fromEntries(res.headers),
    );
  });
}

/**
 * The page of a paged table that the URL's `cursor` names, or the first page when the list
 * refuses that cursor (an edited or outdated link): the Older link pairs with this.
 */
export function pageOfUrl<T>(url: URL, list: (cursor?: string) => Promise<T>): Promise<T> {
  return list(url.searchParams.get("cursor") || undefined).catch(() => list());
}

/** The hidden CSRF field every dashboard form carries. */
export function Csrf({ viewer }: { viewer: Viewer | null }) {
  return <input type="hidden" name="_csrf" value={viewer?.session.csrf ?? ""} />;
}
