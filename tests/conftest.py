"""Fixtures shared by the tests that run on the embedded ImageNet-style folder."""
import tarfile
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / 'fixtures'


@pytest.fixture(scope='module')
def tinynet(tmp_path_factory):
    """The 5-class ImageNet-style folder of tests/fixtures/tinynet.tar (18 train, 11 val images), one copy per
    test module so that a module that damages it harms no other."""
    root = tmp_path_factory.mktemp('tinynet')
    with tarfile.open(FIXTURES / 'tinynet.tar') as tar:
        tar.extractall(root, filter='data')
    return root / 'tinynet'
