# What the authentication tests' Python processes (auth-fork.py, auth-exec.py) share.
import errno, os


def try_open(p):
    """Open and close p read-only: 'ok', or the errno's name (EACCES, …)."""
    try:
        os.close(os.open(p, os.O_RDONLY))
        return 'ok'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
