/** Helpers shared by the adapters that translate OpenAI chat requests to other wire formats. */

/** A plain object, or an empty one for anything else (untrusted JSON). */
export const obj = (v: unknown): Record<string, unknown> =>
  v && typeof v === "object" && !Array.isArray(v) ? v as Record<string, unknown> : {};

/** An array, or an empty one. */
export const arr = (v: unknown): unknown[] => Array.isArray(v) ? v : [];

/** The text of an OpenAI message content (a string or an array of parts). */
export function contentText(content: unknown): string {
  if (typeof content === "string") return content;
  return arr(content).map((p) => {
    const part = obj(p);
    return part.type === "text" && typeof part.text === "string" ? part.text : "";
  }).join("");
}

/** `stop` as a list (OpenAI accepts a string or up to four strings). */
export function stopList(stop: unknown): string[] | undefined {
  if (typeof stop === "string") return [stop];
  const list = arr(stop).filter((s): s is string => typeof s === "string");
  return list.length ? list : undefined;
}

/** A `data:` URL split into its media type and base64 payload, or null for other URLs. */
export function parseDataUrl(url: string): { mediaType: string; data: string } | null {
  const m = /^data:([^;,]+);base64,(.*)$/s.exec(url);
  return m ? { mediaType: m[1], data: m[2] } : null;
}

/** The URL of an OpenAI `image_url` part. */
export function imageUrlOf(part: Record<string, unknown>): string {
  const iu = part.image_url;
  return typeof iu === "string" ? iu : String(obj(iu).url ?? "");
}

/** Parses tool-call arguments; anything but a JSON object becomes an empty object. */
export function parseArgs(args: unknown): Record<string, unknown> {
  if (typeof args !== "string") return obj(args);
  try {
    return obj(JSON.parse(args));
  } catch {
    return {};
  }
}

/** The name of each tool call id in the conversation, for providers that answer by name. */
export function toolNames(messages: unknown[]): Map<string, string> {
  const names = new Map<string, string>();
  for (const m of messages) {
    for (const tc of arr(obj(m).tool_calls)) {
      const t = obj(tc);
      const name = obj(t.function).name;
      if (typeof t.id === "string" && typeof name === "string") names.set(t.id, name);
    }
  }
  return names;
}

/** The OpenAI function tools of a request: name, description and JSON-schema parameters. */
export function functionTools(
  tools: unknown,
): { name: string; description?: string; parameters?: Record<string, unknown> }[] {
  return arr(tools).map((t) => obj(obj(t).function)).filter((f) => typeof f.name === "string")
    .map((f) => ({
      name: f.name as string,
      description: typeof f.description === "string" ? f.description : undefined,
      parameters: f.parameters ? obj(f.parameters) : undefined,
    }));
}

/** The fields every OpenAI chat completion (or chunk) starts with. */
export function completionHead(id: string, model: string, object: string, created?: number) {
  return { id, object, created: created ?? Math.floor(Date.now() / 1000), model };
}
