const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-';

/**
 * A random 21-character ID of [A-Za-z0-9_-] (126 bits). crypto.getRandomValues works on plain-http pages too,
 * unlike crypto.randomUUID.
 */
export function newID(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(21));
  let id = '';
  for (const b of bytes) id += ALPHABET[b & 63];
  return id;
}
