# A raw watch-link client (wcfs-server.md §2), run as its own process by the tests: the server
# kills a client that fails a pin, so never the pytest process itself.
#
#   python rawwatch.py <mnt> <foid> <at>
#
# Opens <mnt>/head/watch, sends `1 watch <foid> @<at>`, acks every pin, and prints every line
# it receives (flushed) until EOF; then prints `EOF`.
import os
import sys


def main():
    mnt, foid, at = sys.argv[1:4]
    fd = os.open(os.path.join(mnt, 'head', 'watch'), os.O_RDWR)
    os.write(fd, ('1 watch %s @%s\n' % (foid, at)).encode())
    buf = b''
    while True:
        data = os.read(fd, 4096)
        if not data:
            break
        buf += data
        while b'\n' in buf:
            line, buf = buf.split(b'\n', 1)
            text = line.decode('latin-1')
            print(text, flush=True)
            stream, _, msg = text.partition(' ')
            if int(stream) % 2 == 0 and int(stream) != 0 and msg.startswith('pin '):
                os.write(fd, ('%s ack\n' % stream).encode())
    print('EOF', flush=True)
    os.close(fd)


if __name__ == '__main__':
    main()
