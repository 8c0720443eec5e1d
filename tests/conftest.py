"""The ``layer_path`` fixture: a test module that declares

    pytestmark = pytest.mark.usefixtures("layer_path")

runs every one of its tests twice, once on the fast kernels (the default) and once inside
``td.plain()``, where every layer takes its plain path. Module scope, so the tests of one
path run together and Hypothesis's @given tests can use it. With TINYDIFF_PLAIN=1 in the
environment the fast half is skipped."""
import pytest

import tinydiff as td


@pytest.fixture(scope="module", params=["fast", "plain"])
def layer_path(request):
    if request.param == "plain":
        with td.plain():
            assert not td.fast.enabled()
            yield "plain"
    else:
        if not td.fast.enabled():
            pytest.skip("TINYDIFF_PLAIN=1 is set: every layer runs its plain path")
        yield "fast"
