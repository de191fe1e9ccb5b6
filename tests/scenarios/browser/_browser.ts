/** Shared setup of the browser tests: Debian's Chromium through playwright-core, and the bundle. */
import { type Browser, chromium, type Page } from "playwright-core";
import { startRouter, type TestRouter } from "../../_helpers.ts";

export const CHROMIUM = "/usr/bin/chromium";
export const hasChromium = await Deno.stat(CHROMIUM).then(() => true, () => false);

export const SCREENSHOTS = new URL("../../screenshots/", import.meta.url);

/** Builds the island bundles when they are missing (a single test file run without the task). */
export async function ensureBundle() {
  const client = new URL("../../../static/build/client.js", import.meta.url);
  if (await Deno.stat(client).then(() => true, () => false)) return;
  const { code } = await new Deno.Command(Deno.execPath(), {
    args: ["task", "build"],
    cwd: new URL("../../../", import.meta.url),
    stdout: "null",
    stderr: "inherit",
  }).output();
  if (code !== 0) throw new Error("deno task build failed");
}

export function launch(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
    ],
  });
}

/**
 * Collects page errors and console errors, so a test can assert there were none. A form answered
 * 400 or 401 (wrong password) is expected; Chromium logs those documents as errors too.
 */
export function watchErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && !/Failed to load resource.*status of 40[01]/.test(m.text())) {
      errors.push(`console: ${m.text()}`);
    }
  });
  return errors;
}

/** Saves a full-page screenshot as tests/screenshots/<name>.png. */
export async function shot(page: Page, name: string) {
  await Deno.mkdir(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: new URL(`${name}.png`, SCREENSHOTS).pathname, fullPage: true });
}

/** Waits until the page's islands are hydrated (pages without islands return at once). */
export async function hydrated(page: Page) {
  if (await page.locator("[data-island]").count() === 0) return;
  await page.waitForSelector("html[data-hydrated='true']");
}

/** The exact USD string behind a money figure. */
export async function usd(page: Page, selector: string): Promise<string | null> {
  return await page.locator(selector).first().getAttribute("data-usd");
}

/**
 * A browser test (skipped where Chromium is missing): the island bundle built, a router started
 * and Chromium launched for `fn`, both closed after it.
 */
export function browserTest(
  name: string,
  fn: (t: TestRouter, browser: Browser) => Promise<void>,
): void {
  Deno.test({ name, ignore: !hasChromium }, async () => {
    await ensureBundle();
    const t = await startRouter();
    const browser = await launch();
    try {
      await fn(t, browser);
    } finally {
      await browser.close();
      await t.close();
    }
  });
}

/** Signs up through the form as a new organisation's owner; lands on the dashboard. */
export async function signUp(
  page: Page,
  t: TestRouter,
  who: { email: string; name?: string; org?: string },
): Promise<void> {
  await page.goto(`${t.url}/signup`);
  await page.getByLabel("Your name").fill(who.name ?? "Ada");
  await page.getByLabel("Email").fill(who.email);
  await page.getByLabel("Organisation").fill(who.org ?? "Analytical Engines");
  await page.getByLabel("Password").fill("a long password 123");
  await page.getByRole("button", { name: "Create account" }).click();
  await page.waitForURL(`${t.url}/dashboard`);
}
