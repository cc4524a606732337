// Entry of the single executable build/wcfs (scripts/build-exe.mjs bundles it with all of
// dist/ into one CommonJS file): the wcfs command, as bin/wcfs.js runs it under node.

import { main } from './main.js';

main(process.argv).catch((e: unknown) => {
  process.stderr.write(`wcfs: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
