/**
 * Headers a request names in `Connection` are hop-by-hop (RFC 9110 7.6.1): they are meant for
 * crowd, not for the upstream, so they are not stored (and so never forwarded).
 */

/** Connection options that name no header a request would carry. */
const PLAIN_OPTIONS = new Set(['', 'close', 'keep-alive', 'upgrade']);

/**
 * Removes from the flat [name, value, ...] list (lower-case names) the headers named in
 * `connection`, the comma-joined values of the request's Connection header lines.
 */
export function dropNominated(headers: string[], connection: string): void {
  let named: Set<string> | null = null;
  for (const option of connection.split(',')) {
    const name = option.trim().toLowerCase();
    if (PLAIN_OPTIONS.has(name)) continue;
    (named ??= new Set()).add(name);
  }
  if (named === null) return;
  let w = 0;
  for (let r = 0; r + 1 < headers.length; r += 2) {
    if (named.has(headers[r]!)) continue;
    headers[w++] = headers[r]!;
    headers[w++] = headers[r + 1]!;
  }
  headers.length = w;
}
