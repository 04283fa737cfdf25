"""`ssl-toolkit plot RUN_DIR --method tsne | umap`: a 2-D map of a run's frozen test features, coloured by
class → PNG."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ssl_toolkit.config import ConfigError
from ssl_toolkit.eval.run import FEATURES, EvaluationRun

PCA_DIMS = 50  # maps of the top principal components: as good, far quicker on 2048-D features
METHODS = ("tsne", "umap")
METHOD_TITLES = {"tsne": "t-SNE", "umap": "UMAP"}


def stratified_subset(targets: torch.Tensor, limit: int, seed: int = 0) -> torch.Tensor:
    """Indices of at most `limit` items drawn at random, every class in proportion to its size."""
    if len(targets) <= limit:
        return torch.arange(len(targets))
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
    by_class = order[targets[order].argsort(stable=True)]  # random order within each class, classes in turn
    return by_class[torch.linspace(0, len(targets) - 1, limit).round().long()].sort().values


def _standardised_components(features: torch.Tensor, seed: int) -> np.ndarray:
    """Features (N, D) standardised, then their top `PCA_DIMS` principal components when D is larger."""
    from sklearn.decomposition import PCA

    x = features.double().numpy()
    x = (x - x.mean(0)) / x.std(0).clip(min=1e-6)
    if x.shape[1] > PCA_DIMS:
        x = PCA(PCA_DIMS, random_state=seed).fit_transform(x)
    return x


def umap_map(features: torch.Tensor, *, neighbours: int = 15, seed: int = 0) -> np.ndarray:
    """2-D UMAP coordinates (N, 2) of features (N, D), after standardisation and PCA to ≤ 50 dimensions
    (umap-learn; `pip install 'ssl-toolkit[umap]'`)."""
    try:
        import umap
    except ImportError:
        raise ConfigError(
            "--method umap needs umap-learn: pip install 'ssl-toolkit[umap]' (or umap-learn)"
        ) from None
    x = _standardised_components(features, seed)
    reducer = umap.UMAP(n_components=2, n_neighbors=min(neighbours, len(x) - 1), random_state=seed)
    return reducer.fit_transform(x)


def tsne_map(features: torch.Tensor, *, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE coordinates (N, 2) of features (N, D), after standardisation and PCA to ≤ 50 dimensions."""
    from sklearn.manifold import TSNE

    x = _standardised_components(features, seed)
    perplexity = min(perplexity, (len(x) - 1) / 3)  # scikit-learn needs perplexity < N
    tsne = TSNE(2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    return tsne.fit_transform(x)


def draw_map(points: np.ndarray, targets: np.ndarray, classes: list[str], title: str, path: Path) -> Path:
    """Scatter `points` (N, 2) coloured by class, with a legend of class names; saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    figure, axes = plt.subplots(figsize=(8, 8), dpi=120)
    for index, name in enumerate(classes):
        chosen = targets == index
        if chosen.any():
            axes.scatter(*points[chosen].T, s=3, alpha=0.7, color=colours(index % colours.N), label=name)
    axes.set(title=title, xticks=[], yticks=[])
    if len(classes) <= 20:
        axes.legend(markerscale=4, fontsize=8, loc="best", frameon=True)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def run_plot(
    run_dir: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    features: str = "backbone",
    method: str = "tsne",
    max_points: int = 10_000,
    perplexity: float = 30.0,
    neighbours: int = 15,
    batch_size: int = 256,
) -> Path | None:
    """A t-SNE or UMAP map of the test split's frozen features → `RUN_DIR/<method>_<features>.png` (and
    W&B); returns its path. `perplexity` is t-SNE's, `neighbours` UMAP's.

    Under `accelerate launch` the main process draws and returns the path; the others return None.
    """
    if method not in METHODS:
        raise ConfigError(f"--method {method!r} is not one of: {', '.join(METHODS)}")
    if features not in FEATURES:
        raise ConfigError(f"--features {features!r} is not one of: {', '.join(FEATURES)}")
    if max_points < 2:
        raise ConfigError(f"--max-points must be at least 2, got {max_points}")
    started = time.perf_counter()
    run = EvaluationRun(run_dir, overrides, batch_size=batch_size)
    test_x, test_y = run.features(features, "test")
    if not run.is_main_process:
        return None
    chosen = stratified_subset(test_y, max_points, seed=run.config.seed)
    if method == "umap":
        points = umap_map(test_x[chosen], neighbours=neighbours, seed=run.config.seed)
    else:
        points = tsne_map(test_x[chosen], perplexity=perplexity, seed=run.config.seed)
    feature_name = "h (backbone)" if features == "backbone" else "z (projection)"
    title = (
        f"{run.config.run.name}: {METHOD_TITLES[method]} of {len(chosen):,} test {feature_name} features "
        f"({test_x.shape[1]}-D), {run.config.data.name}"
    )
    path = run.directory.feature_map(method, features)
    draw_map(points, test_y[chosen].numpy(), run.classes, title, path)
    run.publish(
        {f"{method}/{features}_seconds": time.perf_counter() - started},
        images={f"{method}/{features}": path},
    )
    return path
