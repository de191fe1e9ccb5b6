/** What the managing islands (keys, webhooks) share: running actions, and a secret shown once. */
import type { ComponentChildren } from "preact";
import { useSignal } from "@preact/signals";

/** The outcome of an action on one row (a key, an endpoint), shown under that row. */
export interface RowNote {
  id: string;
  kind: "ok" | "error";
  text: string;
}

/**
 * An island's actions, one at a time (`busy`): `run(f)` reports a failure in `error` (the form's),
 * `run(f, id)` in `row`, under that row.
 */
export function useActions() {
  const busy = useSignal(false);
  const error = useSignal("");
  const row = useSignal<RowNote | null>(null);
  const run = async (f: () => Promise<unknown>, id?: string) => {
    busy.value = true;
    if (id === undefined) error.value = "";
    else row.value = null;
    try {
      await f();
    } catch (e) {
      const text = e instanceof Error ? e.message : String(e);
      if (id === undefined) error.value = text;
      else row.value = { id, kind: "error", text };
    } finally {
      busy.value = false;
    }
  };
  return { busy, error, row, run };
}

/** A secret the API shows once (a key, a signing secret), with a button copying it. */
export function SecretOnce(
  { secret, id, copyId, children }: {
    secret: string;
    id: string;
    copyId: string;
    children: ComponentChildren;
  },
) {
  const copied = useSignal(false);
  const blocked = useSignal(false);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(secret);
      copied.value = true;
    } catch {
      blocked.value = true;
    }
  };
  return (
    <div class="secret" role="status">
      <p>{children}</p>
      <div class="secret-row">
        <code id={id}>{secret}</code>
        <button type="button" class="secondary" onClick={copy} id={copyId}>
          {copied.value ? "Copied" : "Copy"}
        </button>
      </div>
      {blocked.value
        ? <p class="hint">Copying was blocked by the browser: select it and copy it by hand.</p>
        : null}
    </div>
  );
}
