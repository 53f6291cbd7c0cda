"""Fixtures the test files share (a module asks for ``private_cache`` with
``pytestmark = pytest.mark.usefixtures("private_cache")``)."""
import pytest

from oddfiles import make_good_folder


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """Decoded datasets and the built-in faces cached under the test's own folder."""
    monkeypatch.setenv("FASTWGAN_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def data(tmp_path) -> str:
    """A folder of 10 good JPEGs (178x218, as CelebA's)."""
    make_good_folder(tmp_path / "data", n=10)
    return str(tmp_path / "data")
