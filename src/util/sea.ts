// The single executable (build/wcfs: Node's single-executable application, made by
// scripts/build-exe.mjs). Inside it process.execPath is build/wcfs itself, which runs our CLI,
// never `node -e` or a script path; and the native addon comes from the executable's assets.

import sea from 'node:sea';

/** The code runs inside build/wcfs (not under node). */
export function inSingleExecutable(): boolean {
  return sea.isSea();
}

/** The asset name of the native addon in build/wcfs (scripts/build-exe.mjs). */
export const ADDON_ASSET = 'wcfs_native.node';

/** The embedded native addon's bytes. */
export function addonAsset(): ArrayBuffer {
  return sea.getAsset(ADDON_ASSET);
}
