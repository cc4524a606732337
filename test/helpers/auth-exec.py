# A process of the authentication tests (test/wcfs-auth.test.ts) that authenticates and then
# exec()s another program — the same process (pid and start time), a new image:
#   argv: <mountpoint> <keyfile> inherit|cloexec
# `inherit`: the authenticated link's fd survives the exec (the process still holds the link);
# `cloexec`: the exec closes it (Python's default for os.open). The exec'd program tries
# head/at, until it gets EACCES or for 2 s, and prints one JSON line:
#   {"first": "ok"|errno, "last": "ok"|errno, "pid": <pid>, "before": <pid before exec>}
import json, os, sys

from authprobe import try_open

if sys.argv[1] == '--probe':
    import time
    at, before = sys.argv[2], int(sys.argv[3])
    first = last = try_open(at)
    deadline = time.monotonic() + 2
    while last == 'ok' and time.monotonic() < deadline:
        time.sleep(0.01)
        last = try_open(at)
    sys.stdout.write(json.dumps({'first': first, 'last': last, 'pid': os.getpid(), 'before': before}) + '\n')
    sys.stdout.flush()
    sys.exit(0)

mnt, keyfile, mode = sys.argv[1], sys.argv[2], sys.argv[3]
key = open(keyfile, 'rb').read().rstrip(b'\r\n')
fd = os.open(os.path.join(mnt, '.wcfs', 'auth'), os.O_RDWR)
os.write(fd, b'1 auth ' + key + b'\n')
reply = os.read(fd, 4096)
if reply != b'1 ok\n':
    sys.exit('auth: %r' % reply)
os.set_inheritable(fd, mode == 'inherit')
at = os.path.join(mnt, 'head', 'at')
os.execv(sys.executable, [sys.executable, __file__, '--probe', at, str(os.getpid())])
