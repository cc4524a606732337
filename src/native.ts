// The one module that imports the native addon (native/). Everything native is typed here;
// the rest of the code imports from this file only.

import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export interface NativeAddon {
  version(): string;
  /** BSD flock; op 'ex'/'sh' are non-blocking; throws {code:'EAGAIN'} when held elsewhere. */
  flock(fd: number, op: 'ex' | 'sh' | 'un'): void;
}

const here = path.dirname(fileURLToPath(import.meta.url));
// src/native.ts and dist/native.js both sit one level below the package root.
const addonPath = path.resolve(here, '..', 'build', 'Release', 'wcfs_native.node');

let cached: NativeAddon | undefined;

export function native(): NativeAddon {
  if (cached === undefined) {
    const require = createRequire(import.meta.url);
    try {
      cached = require(addonPath) as NativeAddon;
    } catch (e) {
      throw new Error(`wcfs: cannot load native addon ${addonPath} (run \`npm run build:native\`): ${(e as Error).message}`);
    }
  }
  return cached;
}
