// The wcfs client library: WCFS.join(zurl) → wc.connect(at) → conn.open(foid) →
// fileh.mmap(blkStart, blkLen) → mapping.bytes. See conn.ts for the design. WatchLink: the
// head/watch link for applications that answer pins themselves (watchlink.ts; also `wcfs/watchlink`).
export { WCFS, type JoinOptions } from './wcfs.js';
export { Conn, FileH, FileState, Mapping, MAX_MAPPING, type ConnOptions } from './conn.js';
export { ConnClosedError, FileBusyError, FileClosedError, LinkDownError, ServerBugError, WatchError } from './errors.js';
export { WatchLink, type PinRequest, type ServerRequest, type WatchLinkOptions } from './watchlink.js';
