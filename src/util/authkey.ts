// The authentication key file (`wcfs serve --authkeyfile PATH`; clients:
// WENDELIN_CORE_WCFS_AUTHKEYFILE): server and client read it with the same rules, so a file
// that works for one works for the other. The key is the file's text without its trailing
// line end(s); it must be non-empty and one line (it travels as `auth <key>` in one frame of
// .wcfs/auth, src/server/auth.ts). Errors carry the path, never the key.

import { readFileSync } from 'node:fs';
import { WcfsError } from '../errors.js';

/** Environment variable naming the client's key file (upstream's name). */
export const AUTHKEYFILE_ENV = 'WENDELIN_CORE_WCFS_AUTHKEYFILE';

/** Longest key accepted (the line limit of the link is 4096 bytes). */
export const MAX_KEY = 1024;

/** The key in `file`; throws WcfsError WCFS_EAUTHKEY (missing, unreadable, empty, too long, several lines). */
export function readAuthKey(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'latin1');
  } catch (e) {
    throw new WcfsError('WCFS_EAUTHKEY', `authentication key file ${file}: ${(e as Error).message}`, { cause: e });
  }
  const key = text.replace(/[\r\n]+$/, '');
  if (key.length === 0) throw new WcfsError('WCFS_EAUTHKEY', `authentication key file ${file}: empty`);
  if (/[\r\n]/.test(key)) throw new WcfsError('WCFS_EAUTHKEY', `authentication key file ${file}: more than one line`);
  if (key.length > MAX_KEY) throw new WcfsError('WCFS_EAUTHKEY', `authentication key file ${file}: longer than ${MAX_KEY} bytes`);
  return key;
}
