// Process liveness as wcfs needs it: a zombie is dead (its parent may simply not have reaped
// it yet), and a process we may not signal (EPERM) exists.

import { readFileSync } from 'node:fs';

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return st.charAt(st.lastIndexOf(')') + 2) !== 'Z';
  } catch {
    return false;
  }
}
