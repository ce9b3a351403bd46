"""scikit-learn, the field's estimator library (disentanglement_lib fits every classifier with it).

``fit_counting_warnings`` runs a fit and counts scikit-learn's ConvergenceWarnings instead of
printing them: disentanglement_lib's defaults (LogisticRegression stopped at 100 lbfgs
iterations, LinearSVC at 1000) often stop before convergence on real codes, and the result
reports how many fits did so rather than flooding a training log.
"""
from __future__ import annotations

import warnings


def sklearn():
    """The sklearn package, or an ImportError that says how to install it."""
    try:
        import sklearn as module
        import sklearn.ensemble  # noqa: F401  (submodules the metrics use)
        import sklearn.linear_model  # noqa: F401
        import sklearn.metrics  # noqa: F401
        import sklearn.svm  # noqa: F401
    except ImportError as error:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError(
            f"fastfvae.metrics needs scikit-learn (pip install scikit-learn): {error}"
        ) from None
    return module


def fit_counting_warnings(estimator, x, y) -> int:
    """estimator.fit(x, y) on one BLAS/OpenMP thread; returns the number of ConvergenceWarnings
    it raised.

    One thread: the metrics' fits are small (10,000 x 10) and many, and where the cores are busy
    a multi-threaded BLAS or OpenMP loop spin-waits for them: measured on this project's shared
    2-core CPU, a HistGradientBoostingClassifier fit took 13.5 s on 2 threads against 0.69 s on 1.
    Where there are cores to spare, the metrics run independent fits in parallel threads instead.
    """
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1):
        warnings.simplefilter("always", ConvergenceWarning)
        estimator.fit(x, y)
    other = [w for w in caught if not issubclass(w.category, ConvergenceWarning)]
    for w in other:  # not ours to hide
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return len(caught) - len(other)
