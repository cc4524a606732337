// The server without a mount: a Kernel that accepts every notification and caches nothing,
// and FUSE requests made by hand — for server rules (who may open what, auto-exit) that need
// no kernel to show.
import type { RequestContext } from '../../src/fuse/fs.js';
import type { Kernel, WcfsServer } from '../../src/server/server.js';

export function nullKernel(): Kernel {
  return {
    notifier: { invalInode: async () => {}, invalEntry: async () => {}, store: async () => {}, retrieve: async () => [] },
    blockCache: { put: () => true, drop: () => true, served: () => 0 },
    isClosed: false,
    residency: async () => new Uint8Array(0),
  };
}

export const reqCtx = (): RequestContext => ({ signal: new AbortController().signal, interrupted: false });

/** LOOKUP of a path from the root (e.g. ['head', 'at']) as uid/pid; its nodeid. */
export async function lookupPath(srv: WcfsServer, names: string[], who: { uid?: number; pid: number }): Promise<number> {
  let nodeid = 1;
  for (const name of names) {
    nodeid = (await srv.lookup({ id: 1, uid: who.uid ?? 0, gid: 0, pid: who.pid, op: 'LOOKUP', nodeid, name }, reqCtx())).nodeid;
  }
  return nodeid;
}
