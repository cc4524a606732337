# A process of the authentication tests (test/wcfs-auth.test.ts) that speaks .wcfs/auth
# itself and forks without exec:
#   argv: <mountpoint> <keyfile> [hold]
# The parent authenticates, checks it may open head/at, forks; the child (which inherits the
# authenticated link's fd) tries head/at itself and reports; the parent reports, then exits.
# With `hold` the child then keeps the link open until SIGTERM (the test kills it by pid),
# else it exits. Output, one JSON line each:
#   {"parent": "ok"|errno, "pid": <parent pid>}   {"child": "ok"|errno, "pid": <child pid>}
import json, os, signal, sys

from authprobe import try_open

mnt, keyfile = sys.argv[1], sys.argv[2]
hold = sys.argv[3:] == ['hold']
key = open(keyfile, 'rb').read().rstrip(b'\r\n')


def say(d):
    sys.stdout.write(json.dumps(d) + '\n')
    sys.stdout.flush()


fd = os.open(os.path.join(mnt, '.wcfs', 'auth'), os.O_RDWR)
os.write(fd, b'1 auth ' + key + b'\n')
reply = os.read(fd, 4096)
if reply != b'1 ok\n':
    sys.exit('auth: %r' % reply)
at = os.path.join(mnt, 'head', 'at')
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    say({'child': try_open(at), 'pid': os.getpid()})
    os.close(w)  # the parent may go now
    while hold:
        signal.pause()  # SIGTERM ends us
    os._exit(0)
os.close(w)
os.read(r, 1)  # EOF once the child has reported
say({'parent': try_open(at), 'pid': os.getpid()})
