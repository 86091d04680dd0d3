"""Under `make test-asan`: the sanitized extension is the one loaded (a no-op in normal runs)."""

import os

import pytest

import attnsteer


@pytest.mark.skipif("ASAN_OPTIONS" not in os.environ, reason="only under make test-asan")
def test_the_sanitized_extension_is_loaded():
    from attnsteer import _C

    assert "build/asan" in attnsteer.__file__ and attnsteer.backend("cpu") == "cpp", _C.__file__
