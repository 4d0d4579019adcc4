"""gmlab: likelihood-based generative models on PyTorch Lightning and Hydra.

`from gmlab import MFA` gives the scikit-learn-style estimator; the rest lives in
sub-packages (`gmlab.models`, `gmlab.data`, `gmlab.distributions`, `gmlab.nn`, ...).
"""

__version__ = "0.1.0"
__all__ = ["MFA", "__version__"]


def __getattr__(name: str):
    # Imported lazily so that `import gmlab` stays cheap (no Lightning import).
    if name == "MFA":
        from gmlab.estimators.mfa import MFA

        return MFA
    raise AttributeError(f"module 'gmlab' has no attribute {name!r}")
