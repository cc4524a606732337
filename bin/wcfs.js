#!/usr/bin/env node
// wcfs command-line entry: the implementation lives in dist/cli (npm run build).
import('../dist/cli/main.js')
  .then((m) => m.main(process.argv))
  .catch((e) => {
    process.stderr.write(`wcfs: ${e && e.message ? e.message : e}\n`);
    process.exit(1);
  });
