// Neutral values the pickle codec decodes to and encodes from (zodb.md §3).
//
// Decoding never executes anything: GLOBALs become `Global` descriptors, REDUCE/NEWOBJ/
// BUILD/INST/OBJ become `PyObject` values, and the typed layers (BTrees, ZBigFile) check
// shapes. Mapping of Python types:
//   int / long        → bigint            (always, so int64 BTree keys are exact)
//   float             → number
//   bool, None        → boolean, null
//   py3 bytes         → Uint8Array        (SHORT_BINBYTES/BINBYTES/BINBYTES8)
//   py2 str           → ByteStr           (STRING/BINSTRING/SHORT_BINSTRING: bytes + "was str")
//   text (unicode)    → string
//   tuple             → Tuple
//   list              → PyValue[]
//   dict              → PyDict            (insertion-ordered entries; keys of any type)
//   persistent id     → PersistentRef     (ZODB's reference forms, zodb.md §3.2)

export type PyValue = null | boolean | bigint | number | string | Uint8Array | ByteStr | Tuple | PyValue[] | PyDict | Global | PyObject | PersistentRef;

/** A Python 2 `str`: raw bytes that were a str, not bytes (zodb.md §3.5). */
export class ByteStr {
  constructor(readonly bytes: Uint8Array) {}
  /** latin-1 view, 1:1 with the bytes. */
  toString(): string {
    return Buffer.from(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength).toString('latin1');
  }
}

export class Tuple {
  constructor(readonly items: PyValue[]) {}
  get length(): number {
    return this.items.length;
  }
}

/**
 * A dict: entries in insertion order; set() replaces the first entry whose key is equal
 * (pyKeyEquals). Read `entries`; change only through set().
 *
 * Linear time: a hash index buckets entries by keyHash (equal keys ⇒ same bucket), so a
 * pickle's 100k-item SETITEMS costs 100k bucket lookups, not 100k scans of the dict.
 */
export class PyDict {
  readonly entries: Array<[PyValue, PyValue]> = [];
  /**
   * keyHash → indices into entries (ascending); NaN keys are in no bucket. An ES private
   * field: derived state, invisible to deep equality (tests compare dicts by entries).
   */
  readonly #index = new Map<unknown, number[]>();
  set(k: PyValue, v: PyValue): void {
    const h = keyHash(k);
    if (h === NO_MATCH) {
      this.entries.push([k, v]);
      return;
    }
    const bucket = this.#index.get(h);
    if (bucket !== undefined) {
      for (const i of bucket) {
        if (pyKeyEquals(this.entries[i]![0], k)) {
          this.entries[i] = [k, v];
          return;
        }
      }
      bucket.push(this.entries.length);
    } else this.#index.set(h, [this.entries.length]);
    this.entries.push([k, v]);
  }
  /** Lookup by text key; py2 str keys (ByteStr) match their latin-1 text. */
  get(key: string): PyValue | undefined {
    for (const [k, v] of this.entries) {
      if ((typeof k === 'string' && k === key) || (k instanceof ByteStr && k.toString() === key)) return v;
    }
    return undefined;
  }
  get size(): number {
    return this.entries.length;
  }
}

/** A class or function reference: GLOBAL "module\nname\n" (or STACK_GLOBAL). */
export class Global {
  constructor(
    readonly module: string,
    readonly name: string,
  ) {}
  toString(): string {
    return `${this.module}.${this.name}`;
  }
  is(module: string, name: string): boolean {
    return this.module === module && this.name === name;
  }
}

/**
 * The result of REDUCE (callable(*args)), NEWOBJ (cls.__new__(cls, *args)), INST/OBJ, with
 * the state BUILD applied (undefined when there was no BUILD).
 */
export class PyObject {
  constructor(
    readonly kind: 'reduce' | 'newobj' | 'inst',
    readonly callable: PyValue,
    readonly args: PyValue,
    public state: PyValue | undefined = undefined,
  ) {}
}

/**
 * A reference to another persistent object (zodb.md §3.2).
 *   strong: (oid, class) or bare oid        — klass null for the bare form
 *   weak:   ['w', (oid[, db])] or [oid]
 *   xdb:    ['n', (db, oid)] / ['m', (db, oid, class)]
 */
export class PersistentRef {
  constructor(
    readonly oid: bigint,
    readonly klass: Global | null,
    readonly kind: 'strong' | 'weak' | 'xdb' = 'strong',
    readonly database: string | null = null,
  ) {}
}

const NO_MATCH = Symbol('no match');

/**
 * Bucket of a dict key: pyKeyEquals(a, b) ⇒ keyHash(a) === keyHash(b) (SameValueZero, as Map
 * compares). Text, py2 str and bytes hash by their latin-1/UTF-16 content (they can compare
 * equal across types), other objects by identity. NaN never equals anything: NO_MATCH.
 */
function keyHash(k: PyValue): unknown {
  if (typeof k === 'string') return 't' + k;
  if (k instanceof ByteStr) return 't' + k.toString();
  if (k instanceof Uint8Array) return 't' + Buffer.from(k.buffer, k.byteOffset, k.byteLength).toString('latin1');
  if (typeof k === 'number' && Number.isNaN(k)) return NO_MATCH;
  return k; // null, booleans, bigints, numbers by value; objects by identity
}

function pyKeyEquals(a: PyValue, b: PyValue): boolean {
  if (a === b) return true;
  if (typeof a === 'string' && b instanceof ByteStr) return a === b.toString();
  if (typeof b === 'string' && a instanceof ByteStr) return b === a.toString();
  if ((a instanceof Uint8Array || a instanceof ByteStr) && (b instanceof Uint8Array || b instanceof ByteStr)) {
    const x = a instanceof ByteStr ? a.bytes : a;
    const y = b instanceof ByteStr ? b.bytes : b;
    return x.length === y.length && x.every((v, i) => v === y[i]);
  }
  return false;
}

// ---- coercions used by the typed layers ----

/** bytes or py2 str → bytes (pickle.AsBytes in wendelin.core's Go code). */
export function asBytes(v: PyValue): Uint8Array | undefined {
  if (v instanceof Uint8Array) return v;
  if (v instanceof ByteStr) return v.bytes;
  return undefined;
}

/** text or py2 str → string. */
export function asText(v: PyValue): string | undefined {
  if (typeof v === 'string') return v;
  if (v instanceof ByteStr) return v.toString();
  return undefined;
}

/** int → bigint (bools are not ints here). */
export function asInt(v: PyValue): bigint | undefined {
  return typeof v === 'bigint' ? v : undefined;
}

export function asTuple(v: PyValue, len?: number): PyValue[] | undefined {
  if (!(v instanceof Tuple)) return undefined;
  if (len !== undefined && v.items.length !== len) return undefined;
  return v.items;
}

/** Short human description of a value's type, for error messages. */
export function pyTypeName(v: PyValue | undefined): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'None';
  if (typeof v === 'boolean') return 'bool';
  if (typeof v === 'bigint') return 'int';
  if (typeof v === 'number') return 'float';
  if (typeof v === 'string') return 'str';
  if (v instanceof Uint8Array) return 'bytes';
  if (v instanceof ByteStr) return 'py2str';
  if (v instanceof Tuple) return `tuple[${v.items.length}]`;
  if (Array.isArray(v)) return 'list';
  if (v instanceof PyDict) return 'dict';
  if (v instanceof Global) return `global ${v}`;
  if (v instanceof PyObject) return `object(${v.callable instanceof Global ? v.callable.toString() : '?'})`;
  if (v instanceof PersistentRef) return `ref ${v.klass ?? '?'}`;
  return 'unknown';
}
