// Pickle codec: neutral values (types.ts), decoder (decode.ts), encoder (encode.ts) and ZODB
// object records (record.ts). See zodb.md §3.
export * from './types.js';
export { Unpickler, decodePickle, decodePickles, zodbPersistentLoad, type UnpicklerOptions } from './decode.js';
export { Pickler, encodePickle, encodeLong } from './encode.js';
export { decodeRecord, decodeRecordClass, encodeRecord, type ObjectRecord } from './record.js';
export { OP, OPNAME } from './opcodes.js';
