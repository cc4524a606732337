// ZODB BTrees of the LO and IO families (LOBTree/LOBucket, IOBTree/IOBucket): the blktab of a
// ZBigFile and the chunktab of a ZBlk1.
//
//   family.ts  families, classes, KEY_MIN/KEY_MAX, node-size defaults
//   state.ts   persistent states ↔ values (decode validates, encode = BTree_getstate)
//   read.ts    btreeGet / btreeMaxKey (with the visited path and keycovs) and btreeItems
//   cache.ts   NodeCache: decoded nodes by (oid, serial), LRU, bounded by bytes (StorageLoader's)
//   check.ts   btreeCheck: whole-tree structural validation (BTrees' _check + check.check)
//   write.ts   btreeCreate / btreeSet / btreeDelete on a WriteTxn, shaped like BTrees' C code
//
// Keycov (deltatail.md §1.4): the closed key range [lo, hi] a node is responsible for; the root
// covers [KEY_MIN, KEY_MAX] (int64 bounds, for IO trees too).
export {
  KEY_MAX,
  KEY_MIN,
  DEFAULT_MAX_INTERNAL,
  DEFAULT_MAX_LEAF,
  bucketClass,
  familyKeyRange,
  familyOf,
  nodeClass,
  treeClass,
  type BTreeFamily,
  type NodeKind,
} from './family.js';
export { decodeBucketState, decodeTreeState, encodeBucketState, encodeEmbeddedTreeState, encodeTreeState, type BucketState, type TreeState } from './state.js';
export { btreeGet, btreeItems, btreeMaxKey, btreeRange, btreeRangeEach, loadNode, type LoadedNode, type PathNode, type RangeVisit } from './read.js';
export { DEFAULT_NODE_CACHE_BYTES, NodeCache, approxNodeBytes, type NodeCacheStats } from './cache.js';
export { btreeCheck, shapeText, type BTreeCheckResult, type NodeShape } from './check.js';
export { btreeCreate, btreeDelete, btreeSet, type BTreeWriteOptions } from './write.js';
