"""Model governance: drift monitoring, the model registry, champion-challenger comparison and the
validation report (the life of a model after ``finrec train``)."""
