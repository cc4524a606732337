// Where src/ writes diagnostics to stderr: the default `log` of the server, the FUSE session,
// the watch links and FileStorage (each of them takes its own log function), and the CLI's
// messages to the user. Tracing goes through `debug` namespaces instead (README: Tracing).

/** Writes `text` to stderr as it is. */
export function writeStderr(text: string): void {
  process.stderr.write(text);
}

/** Writes one line to stderr: the default log function. */
export function logLine(line: string): void {
  writeStderr(line + '\n');
}

/** `wcfs: <msg>` on stderr: how the CLI talks to the user. */
export function say(msg: string): void {
  logLine(`wcfs: ${msg}`);
}
