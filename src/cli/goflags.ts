// Go's flag package, as upstream's wcfs binary parses its command line: a pure parser over a
// flag table, and Go's time.ParseDuration. Used by src/cli/upstream.ts.
//
// The syntax (Go's flag.FlagSet.Parse):
//   -flag  --flag            a bool flag: true
//   -flag=value --flag=value any flag (bools: 1 0 t f T F true false TRUE FALSE True False)
//   -flag value              a non-bool flag only (a bool never takes the next argument)
//   --                       ends the flags (dropped); so does the first non-flag argument
//                            (anything not starting with "-", or "-" itself)
//   -h  -help                help, unless the table defines them
// Errors carry Go's texts ("flag provided but not defined: -x", "flag needs an argument: -x",
// `invalid value "x" for flag -x: parse error`, "bad flag syntax: ---x"); Go prints the text
// and the usage and exits 2 (0 for help).

export type FlagKind = 'bool' | 'string' | 'duration' | 'int';

export interface FlagDef {
  kind: FlagKind;
  usage: string;
  /** The default, as Go's usage shows it ('' = not shown). */
  dflt?: string;
}

/** A parsed value: bool, string, nanoseconds (duration), or integer. */
export type FlagValue = boolean | string | number;

export type GoFlagsResult = { kind: 'ok'; flags: Map<string, FlagValue>; args: string[] } | { kind: 'help' } | { kind: 'error'; message: string };

const BOOLS: Record<string, boolean> = {
  '1': true,
  t: true,
  T: true,
  true: true,
  TRUE: true,
  True: true,
  '0': false,
  f: false,
  F: false,
  false: false,
  FALSE: false,
  False: false,
};

/** Parse args (the command line after the program name) against table, as Go's flag package does. */
export function parseGoFlags(table: Readonly<Record<string, FlagDef>>, args: readonly string[]): GoFlagsResult {
  const flags = new Map<string, FlagValue>();
  let k = 0;
  for (; k < args.length; k++) {
    const s = args[k]!;
    if (s.length < 2 || s[0] !== '-') break; // a positional argument (or "-")
    let minuses = 1;
    if (s[1] === '-') {
      minuses = 2;
      if (s.length === 2) {
        k++; // "--" ends the flags
        break;
      }
    }
    let name = s.slice(minuses);
    if (name.length === 0 || name[0] === '-' || name[0] === '=') return { kind: 'error', message: `bad flag syntax: ${s}` };
    let value: string | undefined;
    const eq = name.indexOf('=');
    if (eq > 0) {
      value = name.slice(eq + 1);
      name = name.slice(0, eq);
    }
    const def = Object.prototype.hasOwnProperty.call(table, name) ? table[name] : undefined;
    if (def === undefined) {
      if (name === 'h' || name === 'help') return { kind: 'help' };
      return { kind: 'error', message: `flag provided but not defined: -${name}` };
    }
    if (def.kind === 'bool') {
      if (value === undefined) flags.set(name, true);
      else if (Object.prototype.hasOwnProperty.call(BOOLS, value)) flags.set(name, BOOLS[value]!);
      else return { kind: 'error', message: `invalid boolean value ${JSON.stringify(value)} for -${name}: parse error` };
      continue;
    }
    if (value === undefined) {
      if (k + 1 >= args.length) return { kind: 'error', message: `flag needs an argument: -${name}` };
      value = args[++k]!;
    }
    const bad = (): GoFlagsResult => ({ kind: 'error', message: `invalid value ${JSON.stringify(value)} for flag -${name}: parse error` });
    if (def.kind === 'string') flags.set(name, value);
    else if (def.kind === 'int') {
      if (!/^[+-]?\d+$/.test(value)) return bad();
      flags.set(name, Number(value));
    } else {
      const ns = parseGoDuration(value);
      if (ns === undefined) return bad();
      flags.set(name, ns);
    }
  }
  return { kind: 'ok', flags, args: args.slice(k) };
}

/** Go's flag.PrintDefaults layout of table (one "  -name type\n    \tusage" entry per flag, sorted). */
export function goFlagsUsage(table: Readonly<Record<string, FlagDef>>): string {
  let out = '';
  for (const name of Object.keys(table).sort()) {
    const d = table[name]!;
    const type = d.kind === 'bool' ? '' : ` ${d.kind === 'string' ? 'string' : d.kind === 'int' ? 'value' : 'duration'}`;
    out += `  -${name}${type}\n    \t${d.usage}${d.dflt ? ` (default ${d.kind === 'string' ? JSON.stringify(d.dflt) : d.dflt})` : ''}\n`;
  }
  return out;
}

const UNIT_NS: Record<string, number> = { ns: 1, us: 1e3, µs: 1e3, μs: 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };

/**
 * Go's time.ParseDuration: [-+] then one or more <decimal><unit> ("300ms", "1.5h", "1m30s",
 * ".5s"); units ns us µs μs ms s m h; "0" alone needs no unit. → nanoseconds, or undefined
 * when s is not a duration.
 */
export function parseGoDuration(s: string): number | undefined {
  let rest = s;
  let sign = 1;
  if (rest[0] === '-' || rest[0] === '+') {
    if (rest[0] === '-') sign = -1;
    rest = rest.slice(1);
  }
  if (rest === '0') return 0;
  if (rest === '') return undefined;
  let total = 0;
  while (rest !== '') {
    const m = /^(\d*)(?:\.(\d*))?([^\d.]+)/.exec(rest);
    if (!m || (m[1] === '' && (m[2] === undefined || m[2] === ''))) return undefined; // no digits
    const unit = UNIT_NS[m[3]!];
    if (unit === undefined) return undefined; // missing or unknown unit
    total += Number(`${m[1] || '0'}.${m[2] ?? '0'}`) * unit;
    rest = rest.slice(m[0].length);
  }
  return sign * Math.round(total);
}
