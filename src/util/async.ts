// Small promise helpers shared by the server, the control tools, the client, the test helpers,
// the scripts and the benchmarks: the one sleep (abortable) and the one withTimeout.

/**
 * Resolves after `ms`, or earlier when `signal` aborts (it never rejects: an abort only ends
 * the wait, so a poll loop woken early just looks again).
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    if (signal?.aborted) return resolve();
    const done = (): void => {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}

/**
 * p, or a rejection after ms: with timeoutError(), or — given a string `what` — with
 * Error(`timeout after <ms> ms: <what>`). p keeps running; its later result (or rejection) is
 * ignored.
 */
export function withTimeout<T>(p: Promise<T>, ms: number, timeoutError: (() => Error) | string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(typeof timeoutError === 'string' ? new Error(`timeout after ${ms} ms: ${timeoutError}`) : timeoutError()), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}
