# pytest set-up for the cross-language tests: run by test/python.test.ts (npm test) with the
# project virtualenv, or by hand: `.venv/bin/python -m pytest test/py` (after npm run build).
#
# Fixtures: `repo` (the repository root), `node` (the Node binary), `wcfs` (argv prefix of the
# project's CLI), `tmpdb` (a fresh Data.fs path in a temporary directory).
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)  # wendelin.bigfile.file_zodb stand-ins


@pytest.fixture
def repo():
    return REPO


@pytest.fixture
def node():
    return os.environ.get('WCFS_NODE', 'node')


@pytest.fixture
def wcfs(node):
    cli = os.path.join(REPO, 'bin', 'wcfs.js')
    if not os.path.exists(os.path.join(REPO, 'dist', 'cli', 'main.js')):
        pytest.fail('dist/ is missing: run npm run build first')
    return [node, cli]


@pytest.fixture
def tmpdb(tmp_path):
    return str(tmp_path / 'data.fs')


class Served:
    """A `wcfs serve` process on a fresh mountpoint (see the `serve` fixture)."""

    def __init__(self, wcfs, db, mnt, args):
        import subprocess
        import time
        self.db, self.mnt = db, mnt
        os.makedirs(mnt, exist_ok=True)
        self.log = open(mnt + '.log', 'w+b')
        self.proc = subprocess.Popen(wcfs + ['serve', '--poll-ms', '20', *args, db, mnt], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while not os.path.exists(os.path.join(mnt, 'head', 'at')):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                pytest.fail('wcfs serve did not come up:\n' + self.output())
            time.sleep(0.02)
        self.minor = os.minor(os.stat(mnt).st_dev)  # /sys/fs/fuse/connections/<minor>

    def path(self, *parts):
        return os.path.join(self.mnt, *parts)

    def head_at(self):
        with open(self.path('head', 'at')) as f:
            return int(f.read(), 16)

    def wait_head(self, tid, timeout=10):
        import time
        deadline = time.time() + timeout
        while self.head_at() < tid:
            if time.time() > deadline:
                pytest.fail('head/at stays %016x, want %016x' % (self.head_at(), tid))
            time.sleep(0.005)

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors='replace')

    def stop(self):
        """Unmount and reap; a stuck server is aborted through fusectl and killed."""
        import subprocess
        if self.proc.poll() is None:
            subprocess.run(['fusermount3', '-u', self.mnt], capture_output=True, timeout=20)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                abort = '/sys/fs/fuse/connections/%d/abort' % getattr(self, 'minor', -1)
                if os.path.exists(abort):
                    with open(abort, 'w') as f:
                        f.write('1')
                self.proc.kill()
                self.proc.wait(timeout=10)
        subprocess.run(['fusermount3', '-u', '-z', self.mnt], capture_output=True, timeout=20)
        self.log.close()


@pytest.fixture
def serve(wcfs, tmp_path):
    """serve(db, *args) → Served: `wcfs serve` on db; every server is stopped in teardown."""
    servers = []

    def start(db, *args):
        s = Served(wcfs, db, str(tmp_path / ('mnt%d' % len(servers))), list(args))
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()
