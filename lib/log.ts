/**
 * Structured log lines (JSON, one per line). Callers pass metadata only: never a prompt, a
 * completion or an upstream error body.
 */
export type Logger = (
  level: "info" | "warn" | "error",
  msg: string,
  fields?: Record<string, unknown>,
) => void;

/**
 * The default logger: one JSON line per entry on stdout.
 *
 * @example
 * ```ts
 * consoleLogger("info", "listening", { url }); // one JSON line on stdout
 * ```
 */
export const consoleLogger: Logger = (level, msg, fields = {}) => {
  const line = JSON.stringify(
    { t: new Date().toISOString(), level, msg, ...fields },
    (_k, v) => typeof v === "bigint" ? v.toString() : v,
  );
  if (level === "error") console.error(line);
  else console.log(line);
};

export const silentLogger: Logger = () => {};
