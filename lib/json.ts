/**
 * How deep JSON from a request may nest arrays and objects: far beyond any API body's shape, far
 * below the depth at which writing it out again (JSON.stringify recurses) overflows the stack.
 */
export const MAX_JSON_DEPTH = 128;

/**
 * Whether JSON text nests arrays and objects at most `max` deep (brackets inside strings do not
 * count). Checked before text from a client or provider is parsed: JSON.parse takes any depth,
 * but the body is written out again to go upstream or back to the client, and JSON.stringify
 * throws a RangeError a few thousand levels down. Text that is not JSON may pass: JSON.parse
 * refuses it.
 *
 * @example
 * ```ts
 * nestsWithin('{"a":[1,"[[["]}', 2); // true
 * nestsWithin("[[[]]]", 2); // false
 * ```
 */
export function nestsWithin(text: string, max = MAX_JSON_DEPTH): boolean {
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 34) {
      // To the closing quote: the next one after an even run of backslashes.
      for (;;) {
        const q = text.indexOf('"', i + 1);
        if (q === -1) return true;
        let b = q - 1;
        while (text.charCodeAt(b) === 92) b--;
        i = q;
        if ((q - 1 - b) % 2 === 0) break;
      }
    } else if (c === 91 || c === 123) {
      if (++depth > max) return false;
    } else if (c === 93 || c === 125) depth--;
  }
  return true;
}
