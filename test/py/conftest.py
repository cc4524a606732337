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
