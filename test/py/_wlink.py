# A raw head/watch link client in Python (wcfs-server.md §2; like upstream's tWatchLink in
# wcfs_test.py, written anew): the link is opened O_RDWR and used with unbuffered os.read /
# os.write; a reader thread splits what arrives into lines and sorts them:
#
#   "<odd stream> <reply>"      → replies[stream]     (answers to our requests)
#   "<even stream> pin ..."     → pins (pending, in order) — acked by the test (ack/nak), or
#                                 by the reader itself when autoack is set
#   "0 <control>"               → ctl                 ("error: …" / "fatal: …" before EOF)
#
# Every line received is also kept in `rx`, in order, with the time it came.
import os
import threading
import time


class WatchLink:
    def __init__(self, path, autoack=False):
        self.fd = os.open(path, os.O_RDWR)
        self.autoack = autoack
        self.cond = threading.Condition()
        self.rx = []        # (time, line) of every line received
        self.pins = []      # pending pins: (stream, msg)
        self.acked = []     # pins acked by autoack: msg
        self.replies = {}   # stream → reply text
        self.ctl = []       # stream-0 lines
        self.eof = False
        self.rxerr = None   # OSError of the reader, if any
        self.junk = []      # lines that fit nowhere
        self._next = 1
        self._wmu = threading.Lock()
        self._t = threading.Thread(target=self._reader, daemon=True)
        self._t.start()

    # ---- the reader thread ----

    def _reader(self):
        buf = b''
        try:
            while True:
                d = os.read(self.fd, 4096)
                if not d:
                    break
                buf += d
                while b'\n' in buf:
                    line, buf = buf.split(b'\n', 1)
                    self._dispatch(line.decode('latin1'))
        except OSError as e:
            self.rxerr = e
        with self.cond:
            if buf:
                self.junk.append('partial: ' + buf.decode('latin1'))
            self.eof = True
            self.cond.notify_all()

    def _dispatch(self, line):
        with self.cond:
            self.rx.append((time.monotonic(), line))
            sp = line.find(' ')
            try:
                stream = int(line[:sp])
            except ValueError:
                self.junk.append(line)
                self.cond.notify_all()
                return
            msg = line[sp + 1:]
            if stream == 0:
                self.ctl.append(msg)
            elif stream % 2 == 1:
                self.replies[stream] = msg
            elif msg.startswith('pin ') and self.autoack:
                self.acked.append(msg)
                self.write('%d ack\n' % stream)
            elif msg.startswith('pin '):
                self.pins.append((stream, msg))
            else:
                self.junk.append(line)
            self.cond.notify_all()

    # ---- sending ----

    def write(self, data):
        if isinstance(data, str):
            data = data.encode('latin1')
        with self._wmu:
            n = os.write(self.fd, data)
        assert n == len(data), (n, len(data))

    def send_req(self, msg):
        """Send msg on the next odd stream; → the stream."""
        st = self._next
        self._next += 2
        self.write('%d %s\n' % (st, msg))
        return st

    def ack(self, stream, reply='ack'):
        self.write('%d %s\n' % (stream, reply))

    # ---- waiting ----

    def _wait(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = pred()
                if v is not None:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError('wlink: %s: nothing in %.1fs (rx=%r, eof=%s)' % (what, timeout, [l for _, l in self.rx], self.eof))
                self.cond.wait(left)

    def reply(self, stream, timeout=5):
        """The reply on stream (waits for it); AssertionError at EOF without it."""
        def pred():
            if stream in self.replies:
                return self.replies.pop(stream)
            if self.eof:
                raise AssertionError('wlink: EOF before reply on %d (ctl=%r, rx=%r)' % (stream, self.ctl, [l for _, l in self.rx]))
            return None
        return self._wait(pred, timeout, 'reply on %d' % stream)

    def has_reply(self, stream):
        with self.cond:
            return stream in self.replies

    def next_pin(self, timeout=5):
        """The next pending pin → (stream, msg)."""
        def pred():
            if self.pins:
                return self.pins.pop(0)
            if self.eof:
                raise AssertionError('wlink: EOF while waiting for a pin (ctl=%r)' % self.ctl)
            return None
        return self._wait(pred, timeout, 'pin')

    def pending_pins(self):
        with self.cond:
            return [m for _, m in self.pins]

    def wait_eof(self, timeout=5):
        self._wait(lambda: True if self.eof else None, timeout, 'EOF')

    def req(self, msg, want_pins=(), timeout=5):
        """
        Send a request and serve it: every pin that comes before the reply must be one of
        want_pins (each once) and is acked; none may be missing at the reply. → the reply.
        """
        want = set(want_pins)
        assert len(want) == len(want_pins), 'duplicate expected pins'
        st = self.send_req(msg)
        deadline = time.monotonic() + timeout

        def pred():
            if self.pins:
                return ('pin',) + self.pins.pop(0)
            if st in self.replies:
                return ('reply', st, self.replies.pop(st))
            if self.eof:
                raise AssertionError('wlink: EOF before reply to %r (ctl=%r)' % (msg, self.ctl))
            return None

        while True:
            kind, stream, text = self._wait(pred, max(0.0, deadline - time.monotonic()), 'reply to %r' % msg)
            if kind == 'reply':
                assert not want, 'pins missing before %r: %s' % (text, sorted(want))
                return text
            assert text in want, 'unexpected %r (want %s)' % (text, sorted(want))
            want.discard(text)
            self.ack(stream)

    def watch(self, foid, at, want_pins=()):
        """watch foid @at (at None: "-"), expecting exactly want_pins (texts) and "ok"."""
        r = self.req('watch %016x %s' % (foid, '-' if at is None else '@%016x' % at), want_pins)
        assert r == 'ok', r

    def close(self, timeout=5):
        """bye, wait for EOF, close the fd. A link already down is just closed."""
        try:
            if not self.eof:
                try:
                    self.send_req('bye')
                except OSError:
                    pass
                self.wait_eof(timeout)
            self._t.join(timeout)
        finally:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


def pin(foid, blk, rev):
    """The text of a pin request; rev None = @head."""
    return 'pin %016x #%d @%s' % (foid, blk, 'head' if rev is None else '%016x' % rev)
