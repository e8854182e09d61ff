"""Make the sample files of `bceloss eval`: a classifier's predictions on real data.

The data: Breast Cancer Wisconsin (Diagnostic), 569 tumours described by 30 features of a
fine-needle aspirate image, labelled malignant or benign. W. Wolberg, O. Mangasarian,
N. Street and W. Street, UCI Machine Learning Repository, 1995,
https://doi.org/10.24432/C5DW2B, licensed CC BY 4.0; scikit-learn ships a copy in its wheel.

The model: standardized features, L2-regularized logistic regression, and 5-fold
cross-validated predictions, so that each tumour's logit comes from a model that never saw it.

Writes into src/bceloss/data/ (shipped inside the package):
  breast_cancer.csv          columns logit, probability, malignant (1 = malignant), 569 rows
  breast_cancer_logits.npy   the logits as a float64 array of shape (569,)

scikit-learn is needed by this script only, not by bceloss:

    python -m pip install scikit-learn && python scripts/make_sample.py
"""

from __future__ import annotations

import pathlib

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

OUT = pathlib.Path(__file__).resolve().parents[1] / "src" / "bceloss" / "data"


def main() -> None:
    """Fit, predict out of fold, and write the sample files."""
    features, benign = load_breast_cancer(return_X_y=True)
    malignant = 1 - benign  # scikit-learn codes benign as 1; the positive class is malignant
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    logits = cross_val_predict(
        model, features, malignant, cv=folds, method="decision_function"
    ).astype(np.float64)
    # sigmoid(x) = exp(-log1p(exp(-x))): fine for both signs at these magnitudes (|x| < 40).
    probability = np.exp(-np.logaddexp(0.0, -logits))

    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "breast_cancer.csv", "w", encoding="utf-8", newline="\n") as f:
        f.write("logit,probability,malignant\n")
        # repr: the float64 values, to the last bit
        rows = zip(logits, probability, malignant, strict=True)
        f.writelines(f"{float(x)!r},{float(p)!r},{int(y)}\n" for x, p, y in rows)
    np.save(OUT / "breast_cancer_logits.npy", logits)
    print(f"wrote {len(logits)} rows to {OUT}")


if __name__ == "__main__":
    main()
