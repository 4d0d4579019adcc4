"""scikit-learn-style estimators over gmlab's LightningModules (for notebooks).

from gmlab import MFA
mfa = MFA(n_components=50, n_factors=6).fit(X)      # X: [N, d] array/tensor or a DataModule
mfa.score_samples(X), mfa.sample(16), mfa.reconstruct(X, mask), mfa.bpd(X_uint8)
"""

from gmlab.estimators.mfa import MFA

__all__ = ["MFA"]
