import sys

import pytest

from emomoe.errors import MissingDependency, require


def test_require_names_every_missing_package_and_the_extra_without_importing(monkeypatch):
    require("a feature", "x", "json", "email")
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if it were not installed
    with pytest.raises(MissingDependency, match=r"^emomoe lm-eval needs the 'lm_eval', 'no_such_package_xyz' "
                                                r"packages: pip install 'emomoe\[eval\]'$"):
        require("emomoe lm-eval", "eval", "json", "lm_eval", "no_such_package_xyz")
