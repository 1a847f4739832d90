"""moeplane: serve giant mixture-of-experts models with disaggregated prefill/decode pools,
wide expert parallelism, expert load balancing and an SLA planner."""

from pathlib import Path

__version__ = "0.1.0"

# `operator/` has no __init__.py on purpose: it is a namespace portion, so even with the checkout's
# root on sys.path (`python -m` from the root puts it there) `import operator` still finds the
# standard library's module. A wheel install places it at moeplane/operator/, where it resolves
# natively; setuptools' editable finder cannot resolve a nested namespace portion, so from a
# checkout the root joins this package's search path.
_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "operator" / "reconcile.py").is_file():
    __path__.append(str(_CHECKOUT))
