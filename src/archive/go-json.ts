/**
 * JSON string encoding exactly as Go's encoding/json (json.Encoder, HTML escaping on) writes it,
 * so tar-split records match Docker's byte for byte: `<`, `>`, `&` as \u003c \u003e \u0026,
 * U+2028/U+2029 escaped, control characters as \n \r \t or \u00XX (lowercase hex; \b and \f as
 * \u0008 and \u000c, as the Go 1.19 that built Debian's docker.io 20.10 does), other non-ASCII
 * characters raw UTF-8.
 */
const HEX = '0123456789abcdef';

export function goJsonString(s: string): string {
  let out = '"';
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    let esc: string | null = null;
    if (c < 0x20) {
      if (c === 0x0a) esc = '\\n';
      else if (c === 0x0d) esc = '\\r';
      else if (c === 0x09) esc = '\\t';
      else esc = `\\u00${HEX[c >> 4]}${HEX[c & 15]}`;
    } else if (c === 0x22) esc = '\\"';
    else if (c === 0x5c) esc = '\\\\';
    else if (c === 0x3c) esc = '\\u003c';
    else if (c === 0x3e) esc = '\\u003e';
    else if (c === 0x26) esc = '\\u0026';
    else if (c === 0x2028) esc = '\\u2028';
    else if (c === 0x2029) esc = '\\u2029';
    if (esc !== null) {
      out += s.slice(start, i) + esc;
      start = i + 1;
    }
  }
  return out + s.slice(start) + '"';
}
