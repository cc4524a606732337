#!/usr/bin/env python3
"""Load generators for test/wcfs-stress.test.ts (plain Python 3, no dependencies).

  reader  <file> <blksize> <nblk> <secs>
      loop: posix_fadvise(DONTNEED) the first nblk blocks, then pread them; every 4 KiB page
      read must be uniform (the writer fills whole blocks with one byte). Prints `reads N`.
  watcher <mnt> <foid-hex16> <secs>
      opens <mnt>/head/watch; a receiver thread acks every pin; the main thread (re)watches
      <foid> at the current head/at every 20 ms and waits for each reply. Prints
      `pins N watches N`.

  faulty  <mnt> <foid-hex16> <kind> <secs>
      a misbehaving watch client (wcfs-server.md §2.9): watches <foid> at the current head/at,
      then, per kind: `noack` never answers pins, `nak` answers them wrongly, `noread` never
      reads its link, `garbage` sends bad lines (counts the error replies) and says bye.
      Ends when the server kills it, or after secs. Prints `faulty <kind> done`.

  growreader <mnt> <foid-hex16> <blksize> <secs>
      loop: stat head/bigfile/<foid>, then pread its last block; a short read is reported
      (`short: ...`). Prints `reads N short N`.

Exit status: 0 on success, 2 on a wrong byte or an unexpected line, 3 on a stuck reply.
"""
import os
import sys
import threading
import time

PAGE = 4096


def runs(b, most=16):
    """The bytes of b as (byte value x count) runs, at most `most` of them: what a torn page is made of."""
    out = []
    i = 0
    while i < len(b) and len(out) < most:
        j = i
        while j < len(b) and b[j] == b[i]:
            j += 1
        out.append(f"{b[i]:02x}x{j - i}@{i}")
        i = j
    return " ".join(out) + (" ..." if i < len(b) else "")


def reader(path, bs, nblk, secs):
    fd = os.open(path, os.O_RDONLY)
    n = 0
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        os.posix_fadvise(fd, 0, bs * nblk, os.POSIX_FADV_DONTNEED)
        data = os.pread(fd, bs * nblk, 0)
        for off in range(0, len(data), PAGE):
            page = data[off:off + PAGE]
            if page.count(page[0]) != len(page):
                print(f"reader: torn page at offset {off}: {runs(page)}; read of {len(data)} bytes: {runs(data, 64)}", flush=True)
                sys.exit(2)
        n += 1
    os.close(fd)
    print(f"reads {n}", flush=True)


def watcher(mnt, foid, secs):
    fd = os.open(os.path.join(mnt, "head", "watch"), os.O_RDWR)
    wlock = threading.Lock()
    replies = {}  # odd id -> reply text
    cond = threading.Condition()
    state = {"pins": 0, "bad": None}

    def send(line):
        with wlock:
            os.write(fd, (line + "\n").encode())

    def rx():
        buf = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError as e:
                with cond:
                    state["bad"] = state["bad"] or f"read: {e}"
                    cond.notify_all()
                return
            if not chunk:
                with cond:
                    state["bad"] = state["bad"] or "EOF on watch link"
                    cond.notify_all()
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                parts = line.decode().split(" ", 1)
                sid = int(parts[0])
                if sid % 2 == 0:
                    if not parts[1].startswith("pin "):
                        with cond:
                            state["bad"] = f"unexpected server request: {line!r}"
                            cond.notify_all()
                        return
                    state["pins"] += 1
                    send(f"{sid} ack")
                else:
                    with cond:
                        replies[sid] = parts[1]
                        cond.notify_all()

    threading.Thread(target=rx, daemon=True).start()
    sid = 1
    n = 0
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        with open(os.path.join(mnt, "head", "at")) as f:
            at = f.read().strip()
        send(f"{sid} watch {foid} @{at}")
        with cond:
            ok = cond.wait_for(lambda: sid in replies or state["bad"] is not None, timeout=60)
        if state["bad"] is not None:
            print(f"watcher: {state['bad']}", flush=True)
            os._exit(2)
        if not ok:
            print(f"watcher: no reply to {sid} watch {foid} @{at} in 60 s", flush=True)
            os._exit(3)
        if replies[sid] != "ok":
            print(f"watcher: {sid} watch {foid} @{at}: {replies[sid]}", flush=True)
            os._exit(2)
        sid += 2
        n += 1
        time.sleep(0.02)
    print(f"pins {state['pins']} watches {n}", flush=True)
    os._exit(0)  # the receiver thread is still blocked in read


def faulty(mnt, foid, kind, secs):
    fd = os.open(os.path.join(mnt, "head", "watch"), os.O_RDWR)
    with open(os.path.join(mnt, "head", "at")) as f:
        at = f.read().strip()
    os.write(fd, f"1 watch {foid} @{at}\n".encode())
    deadline = time.monotonic() + secs
    if kind == "noread":
        while time.monotonic() < deadline:
            time.sleep(0.1)
    elif kind == "garbage":
        bad = ["3 watch", "5 watch zzz @zzz", "7 hello", "9 watch %s @%s" % (foid, "x" * 60), "11 " + "y" * 200]
        for line in bad:
            os.write(fd, (line + "\n").encode())
        got = b""
        while got.count(b"\n") < 1 + len(bad) and time.monotonic() < deadline:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            got += chunk
        errors = [l for l in got.split(b"\n") if b" error " in l]
        print(f"faulty garbage: {len(errors)} error replies to {len(bad)} bad lines", flush=True)
        try:
            os.write(fd, b"13 bye\n")
        except OSError:
            pass  # the server may have ended the link
    else:
        buf = b""
        while time.monotonic() < deadline:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                parts = line.decode().split(" ", 1)
                if int(parts[0]) % 2 == 0 and kind == "nak":
                    os.write(fd, f"{parts[0]} nak\n".encode())
    print(f"faulty {kind} done", flush=True)
    os._exit(0)


def growreader(mnt, foid, bs, secs):
    path = os.path.join(mnt, "head", "bigfile", foid)
    n = short = 0
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        with open(os.path.join(mnt, "head", "at")) as f:
            at = f.read()
        nblk = os.stat(path).st_size // bs
        if nblk == 0:
            continue
        fd = os.open(path, os.O_RDONLY)
        got = len(os.pread(fd, bs, (nblk - 1) * bs))
        if got != bs:
            short += 1
            print(f"short: head/at {at}: stat {nblk} blocks, read #{nblk - 1}: {got} bytes; fstat now {os.fstat(fd).st_size // bs}", flush=True)
        os.close(fd)
        n += 1
    print(f"reads {n} short {short}", flush=True)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "reader":
        reader(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif cmd == "watcher":
        watcher(args[0], args[1], float(args[2]))
    elif cmd == "growreader":
        growreader(args[0], args[1], int(args[2]), float(args[3]))
    elif cmd == "faulty":
        faulty(args[0], args[1], args[2], float(args[3]))
    else:
        sys.exit(f"unknown command {cmd}")
