// ZODB object records: the class pickle followed by the state pickle, sharing one memo
// (zodb.md §3.1). decodeRecord normalises the class-description forms ZODB accepts to one
// Global; encodeRecord writes what ZODB 6 on Python 3 writes (form 1: a bare GLOBAL).

import { PickleError } from '../errors.js';
import { Unpickler, type UnpicklerOptions } from './decode.js';
import { Pickler } from './encode.js';
import { Global, Tuple, asText, type PyValue } from './types.js';

export interface ObjectRecord {
  klass: Global;
  /** __getnewargs__ arguments when the class description carried them (forms 2, 7). */
  newargs: PyValue | null;
  state: PyValue;
}

/** The class part alone (cheap: stops after the first pickle). */
export function decodeRecordClass(data: Uint8Array): Global {
  return classDescription(new Unpickler(data).load()).klass;
}

export function decodeRecord(data: Uint8Array, opts?: UnpicklerOptions): ObjectRecord {
  const u = new Unpickler(data, 0, opts);
  const { klass, newargs } = classDescription(u.load());
  const statePos = u.pos;
  if (u.atEnd) throw new PickleError(statePos, 'record has no state pickle');
  const state = u.load();
  return { klass, newargs, state };
}

export function encodeRecord(klass: Global, state: PyValue, protocol: 2 | 3 = 3): Uint8Array {
  return new Pickler(protocol).dump(klass).dump(state).result();
}

function classDescription(v: PyValue): { klass: Global; newargs: PyValue | null } {
  if (v instanceof Global) return { klass: v, newargs: null };
  if (v instanceof Tuple && v.items.length === 2) {
    const [c, args] = v.items as [PyValue, PyValue];
    if (c instanceof Global) return { klass: c, newargs: args };
    if (c instanceof Tuple && c.items.length === 2) {
      const m = asText(c.items[0]!);
      const n = asText(c.items[1]!);
      if (m !== undefined && n !== undefined) return { klass: new Global(m, n), newargs: args };
    }
  }
  throw new PickleError(0, 'record: unrecognised class description');
}
