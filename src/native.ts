// The one module that imports the native addon (native/). Everything native is typed here;
// the rest of the code imports from this file only.

import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { errnoNameTable } from './errors.js';
import { addonAsset, inSingleExecutable } from './util/sea.js';

export interface NativeAddon extends NativeTestHooks {
  version(): string;
  /** Installs errno names (index = errno) for native errno errors; first call wins. Done by native(). */
  setErrnoNames(names: string[]): void;
  /** malloc_trim(0): the heap's free pages back to the OS; whether any were (native/addon.cc). */
  mallocTrim(): boolean;
  /** BSD flock; op 'ex'/'sh' are non-blocking; throws {code:'EAGAIN'} when held elsewhere. */
  flock(fd: number, op: 'ex' | 'sh' | 'un'): void;
  /** Read-only MAP_SHARED mmap of [0, length) of fd; munmapped when the buffer is collected. */
  mapFile(fd: number, length: number): ArrayBuffer;
  /** length zero bytes in a read-only private anonymous mmap (the kernel's zero page: no memory; writes fault). */
  mapZeros(length: number): ArrayBuffer;

  /** pidfd_open(2) of a process (thread-group leader) → fd; throws {code: 'ESRCH' | 'EINVAL' | …}. Use ProcessRef (src/util/proc.ts). */
  pidfdOpen(pid: number): number;
  /** pidfd_send_signal(2); throws {code: 'ESRCH'} once the process has exited. */
  pidfdSendSignal(fd: number, signo: number): void;
  /** The pidfd's process has terminated (zombie or reaped). Never blocks. */
  pidfdExited(fd: number): boolean;

  /**
   * libfuse3 low-level session (native/fuse.cc): mounts in the constructor and serves until
   * the kernel ends the connection. Wrapped by src/fuse/session.ts — use that.
   * Throws {code: 'WCFS_EMOUNT'} with libfuse's reason when the mount fails.
   */
  FuseSession: new (mountpoint: string, args: string[], cfg: NativeFuseConfig, handlers: NativeFuseHandlers) => NativeFuseSession;

  /**
   * Page-cache residency of [offset, offset+length) of a file, one byte per page starting at
   * the page containing `offset` (1 = resident), via mmap + mincore without faulting pages
   * in. Runs on a native thread. Resolves with a negative errno on failure.
   */
  cacheResidency(path: string, offset: number, length: number): Promise<Uint8Array | number>;
  /** Reads through a shared read-only mapping on a native thread (clamped to the file size). */
  mmapRead(path: string, offset: number, length: number): Promise<Buffer | number>;

  /**
   * FileStorage index-rebuild scanner (native/fs1scan.cc, driven by src/zodb/fs1/nativescan.ts):
   * walks the txn and data-record headers of buf (the file's bytes at bufPos; `size` bounds
   * the file), resuming from the state st/tids, with the checks of the JS scanner; writes
   * (oid >> 16, oid & 0xffff, pos) triples — the newest record of each oid met — to out and
   * returns their number. Never throws on file content: anything the JS scanner would report
   * stops the walk (st says where and why). Pure: no I/O.
   */
  fs1Scan(buf: Uint8Array, bufPos: number, size: number, st: Float64Array, tids: BigUint64Array, out: Float64Array): number;

  /**
   * Batched FileStorage data-record lookups (native/fs1views.cc, used by
   * FileStorage.loadTransientMany): in, ranges[2i] = the position a load of oids[i] as of `at`
   * starts from (-1: none); out, ranges[2i..2i+1] = the record's data [start, end) in map, or
   * -1, -1 where the general load path must decide. Returns how many were resolved. Pure.
   */
  fs1DataViews(map: Uint8Array, limit: number, at: bigint, oids: BigUint64Array, n: number, ranges: Float64Array): number;

  /**
   * ZBlk1 assembly (native/zdata.cc, used by zbigfile.ts): copies the chunk bytes of the ZData
   * records src[ranges[2k], ranges[2k+1]) to out[offs[k]] for k = from…, zeroing the gap before
   * each; returns the first k not taken (a layout zdataFast does not know, an overlap, a chunk
   * past out, no range) and leaves the end of the last chunk copied in stop[0]. Pure.
   */
  zdataGather(src: Uint8Array, ranges: Float64Array, offs: Float64Array, from: number, n: number, out: Uint8Array, stop: Float64Array): number;

  /**
   * Client side of one watch link (native/client*.cc): owns watchFd, the head-file fds handed
   * in by fileAdd, all mappings, and three threads (rx, pinner, tx). Wrapped by
   * src/client/conn.ts — use that. appRequests: an application's link (src/client/watchlink.ts):
   * server requests come as 'request' events for replyRequest, the pinner stays idle.
   */
  ClientConn: new (
    watchFd: number,
    mountpoint: string,
    onEvent: NativeClientEvent,
    debug?: boolean,
    maxBufferLength?: number,
    appRequests?: boolean,
  ) => NativeClientConn;
}

/**
 * Events of a NativeClientConn, on the JS thread:
 *   'reply' id text — the server's reply to request id; 'linkdown' id why — request id failed;
 *   'down' 0 why — the conn was poisoned (pinner failure; mappings already efaulted), or an
 *   application's link was closed by the server;
 *   'closed' 0 err — close() finished ('' = cleanly);
 *   'request' id text — (appRequests only) the server's request on stream id, for replyRequest.
 */
export type NativeClientEvent = (kind: 'reply' | 'linkdown' | 'down' | 'closed' | 'request', id: number, text: string) => void;

/** See native/client.cc for the contract of each method. */
export interface NativeClientConn {
  /** Sends msg on a new odd stream → its id. Throws {code: 'WCFS_ELINKDOWN'}. */
  request(msg: string): number;
  /** Takes ownership of headFd (returned by fileRemove). → fileId. Throws {code: 'WCFS_EBUSY'} when foid is already added. */
  fileAdd(foid: bigint, headFd: number, blksize: number, size: number): number;
  /** Efaults the file's mappings and forgets it; → fds for the caller to close. */
  fileRemove(fileId: number): number[];
  /**
   * Resync phase 1: the head file has now `size` bytes. Throws {code: 'WCFS_ESERVERBUG'
   * (message: what the server got wrong) | 'WCFS_EFILECLOSED' | 'WCFS_ECONNCLOSED'}, or a
   * plain Error when remapping failed.
   */
  fileResize(fileId: number, size: number): void;
  /** Test hook: the pinned table, [blk, rev]. */
  filePinned(fileId: number): Array<[number, bigint]>;
  /** → [mappingId, ArrayBuffer over the mapping]. Throws {code: 'WCFS_EFILECLOSED' | 'WCFS_ECONNCLOSED' | errno}. */
  mmap(fileId: number, blkStart: number, blkLen: number): [number, ArrayBuffer];
  /** Detaches buffer and munmaps (→ true), or efaults when it cannot detach (→ false). */
  unmap(mappingId: number, buffer: ArrayBuffer): boolean | undefined;
  markDown(reason: string): void;
  down(): string | null;
  /** Starts the close (bye, join threads, close fd); false if already started. */
  close(timeoutMs?: number): boolean;
  fatals(): string[];
  /** appRequests: answers server request id. Throws {code: 'WCFS_EBADARG'} when none awaits a reply on id. */
  replyRequest(id: number, msg: string): void;
  /** Holds Node's event loop open (true) or not: an application waiting for server requests. */
  keepAlive(on: boolean): void;
}

/** Options of native FuseSession (defaults in brackets). */
export interface NativeFuseConfig {
  maxThreads?: number; // libfuse worker threads [4]
  maxBackground?: number; // conn->max_background [64]
  congestionThreshold?: number; // [3/4 of maxBackground]
  notifyThreads?: number; // most threads running fuse_lowlevel_notify_* (started on demand) [8]
  explicitInvalData?: boolean; // want FUSE_CAP_EXPLICIT_INVAL_DATA when capable [true]
  asyncRead?: boolean; // want FUSE_CAP_ASYNC_READ [true]
}

/**
 * Callbacks from native FuseSession, all on the JS thread. The positional request fields
 * are decoded by src/fuse/ops.ts; their meaning depends on the opcode (kernel numbering).
 */
export interface NativeFuseHandlers {
  request(
    opcode: number,
    id: number,
    nodeid: number,
    fh: number, // -1: none
    offset: number,
    size: number,
    flags: number,
    arg: string | Buffer | undefined, // LOOKUP: name; WRITE: payload (a private copy)
    pid: number,
    uid: number,
    gid: number,
    interrupted: boolean, // FUSE_INTERRUPT arrived before JS saw the request
  ): void;
  interrupt(id: number): void;
  /** [nodeid, nlookup]* — already answered natively. */
  forget(pairs: Float64Array): void;
  /** INIT layout, see src/fuse/kernel.ts INIT_*. */
  init(info: Float64Array): void;
  destroy(): void;
  /** The session loop ended and the native session is gone; rc of fuse_session_loop_mt. */
  exit(rc: number): void;
}

/**
 * reply*: 0, or -errno (-ESRCH unknown/already answered id, -ENOTCONN closed, -ENOENT the
 * kernel dropped the request because it was interrupted). notify*: resolve with 0/-errno;
 * notifyRetrieve with the cached prefix (≤ max_write bytes) or -errno.
 */
export interface NativeFuseSession {
  replyErr(id: number, errno: number): number;
  replyNone(id: number): number;
  replyEntry(id: number, nodeid: number, generation: number, entryTimeout: number, attrTimeout: number, attr: Float64Array): number;
  replyAttr(id: number, attr: Float64Array, attrTimeout: number): number;
  replyOpen(id: number, fh: number, openFlags: number): number;
  replyData(id: number, data: Uint8Array): number;
  replyWrite(id: number, count: number): number;
  /** → number of entries that fit (≥ 0) or -errno. */
  replyReaddir(id: number, size: number, names: string[], inos: number[], modes: number[], offs: number[]): number;
  replyStatfs(id: number, st: Float64Array): number;
  notifyInvalInode(ino: number, off: number, len: number): Promise<number>;
  notifyInvalEntry(parent: number, name: string): Promise<number>;
  /** Zero-copy: `data` must not change until the promise settles. */
  notifyStore(ino: number, off: number, data: Uint8Array): Promise<number>;
  /** With `dest` (≥ size bytes, untouched until settled): the bytes go there, resolves with their count (or -errno). */
  notifyRetrieve(ino: number, off: number, size: number, dest?: Uint8Array): Promise<Buffer | number>;
  pending(): number;
  /**
   * READ fast path: READs wholly inside [off, off+data.length) of nodeid are answered on the
   * libfuse worker from `data` (must not change while registered), marking the 4 KiB pages
   * they fully cover in `served` (1 byte per page of the range). Replaces overlapping ranges.
   * → false when the session is closed.
   */
  cacheBlock(nodeid: number, off: number, data: Uint8Array, served: Uint8Array): boolean;
  /** Unregisters the range starting at off; on return no worker sends from it any more. */
  uncacheBlock(nodeid: number, off: number): boolean;
  /** READs the fast path answered so far (0 once the session is gone). */
  fastReads(): number;
  ref(): void;
  unref(): void;
}

// ---- test hooks ----
// Entry points of native/test_hooks.cc: for the tests and the benchmarks only; src/ never
// calls them (they come with every build of the addon, so NativeAddon includes them).

export interface NativeTestHooks {
  /**
   * Reads view[off] for each offset in a child process (see native/test_hooks.cc).
   * values[i] = byte read, or -signo if the read faulted; fds[i] = 0 open / -errno closed
   * (in the child). mode 'raw': clone without atfork handlers; 'fork': fork(); 'crash':
   * unguarded read of offsets[0].
   */
  clientProbe(view: Uint8Array, offsets: number[], mode: 'raw' | 'fork' | 'crash', fds?: number[]): { values: Int32Array; fds: Int32Array; status: string };
  /** A connected AF_UNIX socket pair (O_CLOEXEC), stand-in for head/watch. */
  clientSocketpair(): [number, number];
  /**
   * How the client's rx thread + pinner read one server line (bytes without the
   * LF): a frame error, or stream + message, and for even streams ≠ 0 the parsed pin or the
   * pin's error (native/client_wlink.cc ParseFrame, ParsePin).
   */
  clientParseLine(line: Uint8Array): NativeParsedLine;
}

/** See NativeTestHooks.clientParseLine. rev null = @head. */
export type NativeParsedLine = { error: string } | { stream: bigint; msg: Buffer; pin?: { foid: bigint; blk: number; rev: bigint | null }; pinError?: string };

let cached: NativeAddon | undefined;

/**
 * The addon: build/Release/wcfs_native.node beside dist/ (src/native.ts and dist/native.js both
 * sit one level below the package root); inside the single executable (src/util/sea.ts) the
 * copy embedded in it, written to a private temporary directory, loaded, and removed again
 * (the loaded library stays mapped); if that fails (a noexec tmpdir), Release/wcfs_native.node
 * beside the executable (build/wcfs and build/Release/ of one build).
 */
function loadAddon(): NativeAddon {
  if (inSingleExecutable()) {
    const mod = { exports: {} as NativeAddon };
    const beside = path.join(path.dirname(process.execPath), 'Release', 'wcfs_native.node');
    const dir = mkdtempSync(path.join(tmpdir(), 'wcfs-native-'));
    const p = path.join(dir, 'wcfs_native.node');
    try {
      writeFileSync(p, new Uint8Array(addonAsset()), { mode: 0o500, flag: 'wx' });
      process.dlopen(mod, p);
      return mod.exports;
    } catch (e) {
      try {
        process.dlopen(mod, beside);
        return mod.exports;
      } catch (e2) {
        throw new Error(
          `wcfs: cannot load the native addon embedded in ${process.execPath} (${(e as Error).message}) nor ${beside} (${(e2 as Error).message})`,
        );
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  const addonPath = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'build', 'Release', 'wcfs_native.node');
  try {
    return createRequire(import.meta.url)(addonPath) as NativeAddon;
  } catch (e) {
    throw new Error(`wcfs: cannot load native addon ${addonPath} (run \`npm run build:native\`): ${(e as Error).message}`);
  }
}

export function native(): NativeAddon {
  if (cached === undefined) {
    cached = loadAddon();
    cached.setErrnoNames(errnoNameTable()); // errno errors from native carry the registry's names
  }
  return cached;
}
