"""Batch scoring on Ray Data: ``finrec score --engine ray``, for customer tables spread over a
cluster.

>>> score_dataset_ray("models/default", "data/huge", "top5.parquet", k=5)

The customers Parquet is read with ``ray.data.read_parquet``; ``map_batches`` runs
``ScoreBatches``, a callable class that rebuilds the ``Recommender`` once per worker from the model
directory's bytes (shipped through the object store, so workers need no shared filesystem for the
model) and returns the top-k table of each batch with the local engine's code (``Recommender.rank`` +
``topk_table``): the same rankings as ``finrec.recommend.batch.score_dataset``.

Output: a name ending in ``.parquet`` or ``.csv`` is one file, written atomically by the driver
as the results stream back in input order (the top-k rows are small: k per customer); any other
name is a directory of Parquet part files written by the workers (``Dataset.write_parquet``;
not atomic, part names chosen by Ray), the choice for very large outputs on a cluster.

Where Ray runs: ``address`` (or the ``RAY_ADDRESS`` environment variable) names a running
cluster; without either, a local Ray instance is started with ``num_cpus``. Each worker reads
the holdings table once (one bool row per customer who holds something).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from finrec.data import schema as S
from finrec.data.io import find_table, prepare_entities, read_schema, read_table
from finrec.errors import FinrecError

DEFAULT_BATCH_ROWS = 65_536


def _require_ray():
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the environment
        raise FinrecError("the ray engine needs Ray: pip install 'finrec[ray]'") from None
    return ray


def _model_files(model_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(model_dir)): p.read_bytes() for p in sorted(model_dir.rglob("*")) if p.is_file()}


class ScoreBatches:
    """``map_batches`` callable: loads the model once per worker, scores pandas batches."""

    def __init__(self, model_ref, k: int, filters, holdings_path: str | None):
        import ray

        from finrec.artifacts import load_model_dir
        from finrec.recommend import filters as F
        from finrec.recommend.batch import HoldingsLookup
        from finrec.recommend.recommender import Recommender

        # Ray resolves an object reference passed as a constructor argument; accept both.
        files = ray.get(model_ref) if isinstance(model_ref, ray.ObjectRef) else model_ref
        with tempfile.TemporaryDirectory(prefix="finrec-model-") as tmp:
            for name, data in files.items():
                path = Path(tmp) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            self.recommender = Recommender(load_model_dir(tmp).trained)
        self.k = k
        self.filters = F.Filters.build(filters)
        holdings = read_table(Path(holdings_path), (S.CUSTOMER_ID, S.PRODUCT_ID)) if holdings_path else None
        self.lookup = HoldingsLookup(self.recommender.pipeline, holdings)
        self.product_ids = pa.array(self.recommender.pipeline.product_ids_, pa.string())
        self.table = self.recommender.schema.customers

    def __call__(self, batch) -> pa.Table:
        from finrec.data.ids import ids_as_text
        from finrec.recommend.batch import topk_table

        if self.table.id in batch.columns:
            batch[self.table.id] = ids_as_text(batch[self.table.id])
        chunk = prepare_entities(batch, self.table, "customers (ray batch)")
        ids = chunk[self.table.id].to_numpy()
        context = self.recommender.context(chunk, held=self.lookup.rows(ids))
        ranking = self.recommender.rank(context, self.k, self.filters)
        return topk_table(ids, self.product_ids, ranking.index, ranking.scores)


def score_dataset_ray(model_dir: str | Path, data_dir: str | Path, out: str | Path, k: int = 5, filters=None,
                      batch_rows: int = DEFAULT_BATCH_ROWS, address: str | None = None, num_cpus: int | None = None,
                      concurrency: int | None = None) -> tuple[int, int]:
    """Score every customer in ``data_dir`` on Ray; returns (customers scored, rows written).
    ``concurrency`` scoring actors of one CPU each (default: the cluster's CPUs less one, at
    least 1), each loading the model once; leave CPUs for the Parquet read tasks."""
    ray = _require_ray()
    model_dir, data_dir, out = Path(model_dir), Path(data_dir), Path(out)
    from finrec.artifacts import load_model_dir

    schema = read_schema(data_dir)
    load_model_dir(model_dir, expect_schema=schema.to_dict())  # refuse a damaged or mismatched model here
    customers_path = find_table(data_dir, S.CUSTOMERS)
    if customers_path.suffix != ".parquet":
        raise FinrecError(f"{customers_path}: the ray engine reads Parquet; convert the table or use --engine local")
    holdings_path = find_table(data_dir, S.HOLDINGS, required=False)

    started_here = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, ignore_reinit_error=True)
        started_here = True
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # output in input order, like the local engine
        if concurrency is None:  # leave one CPU for the read tasks: actors holding all of them starve the reads
            concurrency = max(1, int(ray.cluster_resources().get("CPU", 1)) - 1)
        model_ref = ray.put(_model_files(model_dir))
        ds = ray.data.read_parquet(str(customers_path.resolve()))
        scored = ds.map_batches(
            ScoreBatches,
            fn_constructor_args=(model_ref, k, filters, str(holdings_path.resolve()) if holdings_path else None),
            batch_size=batch_rows,
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=concurrency),
        )
        if out.suffix in (".parquet", ".csv"):
            from finrec.recommend.batch import TopKWriter

            with TopKWriter(out) as writer:
                for table in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
                    writer.write(table)
            rows = writer.rows
        else:
            scored.write_parquet(str(out.resolve()))
            rows = sum(pq.ParquetFile(p).metadata.num_rows for p in out.glob("*.parquet"))
        return pq.ParquetFile(customers_path).metadata.num_rows, rows
    finally:
        if started_here:
            ray.shutdown()
