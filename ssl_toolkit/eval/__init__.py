"""Offline evaluation of a finished run's encoder, one module per protocol: probe (the L-BFGS linear probe or
gradient boosting on frozen features), knn, sgd_probe, finetune, maps (t-SNE, UMAP); run opens a run,
features embeds and caches its splits, defaults holds every protocol's defaults."""
