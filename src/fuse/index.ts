// The FUSE layer: our own binding over libfuse3's low-level API (native/fuse.cc) and its
// TypeScript side. Start at session.ts.
export * from './kernel.js';
export * from './errors.js';
export type * from './fs.js';
export { type Notifier, KernelNotifier } from './notifier.js';
export { FuseSession, type MountOptions, type ExitInfo } from './session.js';
export * from './mountinfo.js';
export { cacheResidency, mmapRead } from './pagecache.js';
