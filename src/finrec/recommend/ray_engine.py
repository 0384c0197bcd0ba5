"""Batch scoring on Ray Data: ``finrec score --engine ray``, for customer tables spread over a
cluster.

>>> score_dataset_ray("models/default", "data/huge", "top5.parquet", k=5)

The customers table is read with ``ray.data.read_parquet`` or ``ray.data.read_csv`` (every CSV
column as text, then typed per batch as the local engine's pandas reader types it: ids stay
text, a column of numbers becomes numbers); ``map_batches`` runs
``ScoreBatches``, a callable class that rebuilds the ``Recommender`` once per worker from the model
directory's bytes (shipped through the object store, so workers need no shared filesystem for the
model) and returns the top-k table of each batch with the local engine's code (``Recommender.rank`` +
``topk_table``): the same rankings as ``finrec.recommend.batch.score_dataset``, and with
``probabilities`` the same calibrated probabilities from the ranking's own embeddings. Customers
who objected to profiling for marketing are neither ranked nor in the output; the driver counts
them from the consent column (one column read), as the local engine reports them.

Output: a name ending in ``.parquet`` or ``.csv`` is one file, written atomically by the driver
as the results stream back in input order (the top-k rows are small: k per customer); any other
name is a directory of Parquet part files written by the workers (``Dataset.write_parquet``;
not atomic, part names chosen by Ray), the choice for very large outputs on a cluster; it must
not exist yet or be empty.

Where Ray runs: ``address`` (or the ``RAY_ADDRESS`` environment variable) names a running
cluster; without either, a local Ray instance is started with ``num_cpus``. Each worker reads
the holdings table once (one bool row per customer who holds something).
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from finrec.atomic import check_writable, refuse_overlap
from finrec.data import schema as S
from finrec.data.io import (
    find_table,
    iter_customer_chunks,
    prepare_entities,
    read_customer_ids,
    read_id_column,
    read_schema,
    read_table,
)
from finrec.data.links import link_batches
from finrec.errors import DataError, FinrecError

DEFAULT_BATCH_ROWS = 65_536
# pandas.read_csv's default missing-value markers, so that a CSV cell is missing on Ray exactly
# when it is missing for the local engine (Arrow's own list lacks "None" and "<NA>").
PANDAS_NA_VALUES = (
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
)
_BOOLEANS = {"True": True, "TRUE": True, "true": True, "False": False, "FALSE": False, "false": False}


def check_ray_output(out, inputs: dict, what: str = "out") -> None:
    """Refuse, before any work, an output over an input (``inputs``: description -> path), or one
    the engine cannot write: a .csv/.parquet name as the local engine checks it; any other name
    is a directory of part files, which must be new or empty (old parts would be counted and
    mixed with the new ones)."""
    from finrec.recommend.batch import OUTPUT_SUFFIXES, check_scores_output

    out = Path(out)
    if out.suffix in OUTPUT_SUFFIXES:
        check_scores_output(out, inputs, what=what)
        return
    refuse_overlap(out, inputs, what=what)
    check_writable(out, "directory", what=what)
    if out.is_dir() and any(out.iterdir()):
        raise FinrecError(
            f"{what} {out}: the directory of part files is not empty; name a new one (nothing was written)"
        )


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return next(csv.reader(handle), [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV header ({exc})") from None


def _csv_convert_options(path: Path):
    """Every column as text: Arrow infers types from the first block and fails on a later block
    that disagrees (whole numbers, then a decimal), so types are settled per batch instead."""
    import pyarrow.csv as pacsv

    return pacsv.ConvertOptions(
        column_types={name: pa.string() for name in _csv_header(path)},
        null_values=list(PANDAS_NA_VALUES),
        strings_can_be_null=True,
    )


def _typed_like_pandas(values: pd.Series) -> pd.Series:
    """A text column as ``pandas.read_csv`` types it: numbers when every present value is one,
    booleans when every one is a boolean word, else the text. Category values are then the same
    as in the local engine, which ``prepare_entities`` gives the category rule ("1" from 1 and
    from 1.0 beside a missing value; ``finrec.data.categories``)."""
    # Plain Python values first: on Ray's Arrow-backed text, pd.to_numeric answers NaN *values*
    # (not missing) for words, so every word would pass as a number.
    values = pd.Series(values.to_numpy(dtype=object, na_value=None), index=values.index, name=values.name)
    present = values.notna()
    if not present.any():
        return values
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers[present].notna().all():
        return numbers
    words = values[present].astype(str)
    if words.isin(list(_BOOLEANS)).all():
        return values.map(_BOOLEANS.get).astype(object if not present.all() else bool)
    return values


def count_objected(customers_path: Path, table: S.TableSchema) -> int:
    """Customers in the file who objected to profiling for marketing (0 without a consent column)."""
    if not table.consent:
        return 0
    from finrec.data.compliance import objected

    values = read_id_column(customers_path, table.consent).to_pandas().rename(table.consent)
    return int(objected(values, f"{S.CUSTOMERS}.{table.consent}").sum())


def _count_runs(ids: pa.ChunkedArray, count: int, last) -> tuple[int, object]:
    """Customers in a batch of output rows, a customer's rows being consecutive (a batch may end
    inside a customer's rows: ``last`` is the previous batch's last id). Returns the running
    count and this batch's last id."""
    values = ids.to_numpy(zero_copy_only=False)
    if not len(values):
        return count, last
    starts = np.count_nonzero(values[1:] != values[:-1]) + int(values[0] != last)
    return count + starts, values[-1]


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

    def __init__(
        self,
        model_ref,
        k: int,
        filters,
        holdings_path: str | None,
        text_columns: bool = False,
        probabilities: bool = False,
        data_dir: str | None = None,
    ):
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
            # The numpy tower is all a worker scores with: no Keras import in each actor (~10 s).
            self.recommender = Recommender(load_model_dir(tmp, keras_model=False).trained)
        if data_dir is not None:  # the filters read the data's products table, as the local engine's
            self.recommender = self.recommender.for_data(data_dir)
        self.k = k
        self.filters = F.Filters.build(filters)
        holdings = read_table(Path(holdings_path), (S.CUSTOMER_ID, S.PRODUCT_ID)) if holdings_path else None
        self.lookup = HoldingsLookup(self.recommender.pipeline, holdings)
        self.product_ids = pa.array(self.recommender.pipeline.product_ids_, pa.string())
        self.table = self.recommender.schema.customers
        self.text_columns = text_columns  # a CSV read as text: type the feature columns as pandas would
        self.probabilities = probabilities

    def __call__(self, batch) -> pa.Table:
        from finrec.data.ids import ids_as_text
        from finrec.recommend.batch import topk_table

        if self.table.id in batch.columns:
            batch[self.table.id] = ids_as_text(batch[self.table.id])
        if self.text_columns:
            for column in (*self.table.numeric_features, *self.table.categorical_features):
                if column in batch.columns:
                    batch[column] = _typed_like_pandas(batch[column])
        # A batch does not know where in the file it starts: its first id says where to look.
        first = batch[self.table.id].iloc[0] if self.table.id in batch.columns and len(batch) else None
        start = "whose first row has no id" if first is None or pd.isna(first) else f"from customer_id {first!r}"
        where = f"customers (the Ray batch of {len(batch)} rows {start}; rows counted in it)"
        chunk = prepare_entities(batch, self.table, where)
        ids = chunk[self.table.id].to_numpy()
        context = self.recommender.context(
            chunk, held=self.lookup.rows(ids), adoption=self.probabilities, validated=True
        )
        ranking = self.recommender.rank(context, self.k, self.filters)
        chosen = self.recommender.ranked_probabilities(context, ranking) if self.probabilities else None
        return topk_table(ids, self.product_ids, ranking.index, ranking.scores, chosen)


def _finrec_cause(exc: BaseException, wrapper: type) -> FinrecError | None:
    """The ``FinrecError`` a Ray error wraps (its ``cause``, or an exception chained to it);
    Ray's own wrappers, which may subclass the cause's type, are looked through."""
    stack, seen = [exc], set()
    while stack:
        error = stack.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, FinrecError) and not isinstance(error, wrapper):
            return error
        stack += [error.__context__, error.__cause__, getattr(error, "cause", None)]
    return None


def score_dataset_ray(
    model_dir: str | Path,
    data_dir: str | Path,
    out: str | Path,
    k: int = 5,
    filters=None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    address: str | None = None,
    num_cpus: int | None = None,
    concurrency: int | None = None,
    probabilities: bool = False,
    stats: dict | None = None,
) -> tuple[int, int]:
    """Score every customer in ``data_dir`` (a Parquet or CSV customers table) on Ray; returns
    (customers read, rows written). ``concurrency`` scoring actors of one CPU each (default:
    the cluster's CPUs less one, at least 1), each loading the model once; leave CPUs for the
    read tasks. ``probabilities`` adds the calibrated adoption probability of each row (the
    model must have a calibration); ``stats``, when given, receives ``objected``, ``no_eligible`` and ``catalogue``
    as from the local engine (``score_dataset``)."""
    from finrec.recommend import filters as F

    model_dir, data_dir, out = Path(model_dir), Path(data_dir), Path(out)
    check_ray_output(out, {"the data directory": data_dir, "the model directory": model_dir})
    filters = F.Filters.build(filters)  # here: a bad filter killed every scoring actor in its constructor
    ray = _require_ray()
    from finrec.artifacts import expected_schema, load_model_dir

    schema = read_schema(data_dir)
    # Refuse a damaged or mismatched model here, as the workers will read it. A value column
    # named after training is no mismatch, as for the local engine (it refused the model).
    loaded = load_model_dir(model_dir, expect_schema=expected_schema(model_dir, schema), keras_model=False)
    if probabilities and getattr(loaded.trained, "calibration", None) is None:
        raise FinrecError("--probabilities: this model has no calibration (calibration.json); retrain it")
    from finrec.recommend.recommender import Recommender

    # Read here too, so a products table the filters cannot use is refused before Ray starts.
    changes = Recommender(loaded.trained).for_data(data_dir).catalogue_changes
    if (
        getattr(loaded.trained.pipeline, "history_", None) is not None
        and find_table(data_dir, S.HOLDINGS_HISTORY, required=False) is not None
    ):
        # Its workers read customers and holdings only: scoring without the history would
        # silently rank differently from the local engine.
        raise FinrecError(
            "--engine ray does not read holdings_history yet, and this model uses it: use the local engine"
        )
    customers_path = find_table(data_dir, S.CUSTOMERS)
    is_csv = customers_path.suffix == ".csv"
    # The file's first rows checked as the local engine checks them (separator, names, an empty
    # table: Ray wrote an empty output for a CSV of a header alone); then every id, as each batch
    # is validated alone and a customer repeated in another batch was scored twice.
    next(iter_customer_chunks(customers_path, schema.customers, 1024), None)
    customer_ids = read_customer_ids(customers_path, schema.customers.id)
    n_customers = len(customer_ids)
    convert_options = _csv_convert_options(customers_path) if is_csv else None
    holdings_path = find_table(data_dir, S.HOLDINGS, required=False)
    if holdings_path is not None:
        # Its header and first rows checked as the local engine checks them: in a worker's
        # constructor a missing column was a KeyError ("internal error", exit 1).
        next(iter(link_batches(holdings_path, 1024)), None)
        # Every row's ids, as the local engine checks them: a holding of an unknown customer or
        # product was skipped by the workers, and a customer scored as holding nothing.
        from finrec.recommend.batch import HoldingsByRow, data_product_ids

        HoldingsByRow(loaded.trained.pipeline, customer_ids, holdings_path, products=data_product_ids(data_dir, schema))

    started_here = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        ray.init(
            address=address,
            num_cpus=None if address else num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
        )
        started_here = True
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # output in input order, like the local engine
        # A worker's own exception, not Ray Data's UserCodeException, which drops it in transit
        # (``_finrec_cause`` then finds the DataError in the task error).
        context.raise_original_map_exception = True
        if concurrency is None:  # leave one CPU for the read tasks: actors holding all of them starve the reads
            concurrency = max(1, int(ray.cluster_resources().get("CPU", 1)) - 1)
        model_ref = ray.put(_model_files(model_dir))
        if is_csv:
            # No hive partitioning: a directory named key=value must not add a column.
            ds = ray.data.read_csv(str(customers_path.resolve()), convert_options=convert_options, partitioning=None)
        else:
            ds = ray.data.read_parquet(str(customers_path.resolve()))
        scored = ds.map_batches(
            ScoreBatches,
            fn_constructor_args=(
                model_ref,
                k,
                filters,
                str(holdings_path.resolve()) if holdings_path else None,
                is_csv,
                probabilities,
                str(data_dir.resolve()),
            ),
            batch_size=batch_rows,
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=concurrency),
        )
        try:
            if out.suffix in (".parquet", ".csv"):
                from finrec.recommend.batch import OUTPUT_SCHEMA, PROBABILITY_SCHEMA, TopKWriter

                written_for, last = 0, None
                with TopKWriter(out, PROBABILITY_SCHEMA if probabilities else OUTPUT_SCHEMA) as writer:
                    for table in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
                        writer.write(table)
                        written_for, last = _count_runs(table.column(S.CUSTOMER_ID), written_for, last)
                rows = writer.rows
            else:
                scored.write_parquet(str(out.resolve()))
                parts = sorted(out.glob("*.parquet"))
                rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
                written_for = (
                    pc.count_distinct(pq.read_table(parts, columns=[S.CUSTOMER_ID]).column(0)).as_py() if parts else 0
                )
        except ray.exceptions.RayError as exc:
            # A worker's DataError (a value that is not a number, an empty id) reached the CLI
            # wrapped in Ray's task error: "internal error" with a remote traceback, exit 1.
            found = _finrec_cause(exc, ray.exceptions.RayError)
            if found is None:
                raise
            # Ray appends its retry advice to the message: the first line is finrec's.
            raise type(found)(str(found).split("\n", 1)[0]) from None
        if stats is not None:
            stats["objected"] = count_objected(customers_path, schema.customers)
            # Ranked, no product passed the filters: no row, as the local engine counts them.
            stats["no_eligible"] = n_customers - stats["objected"] - written_for
            stats["catalogue"] = changes
        return n_customers, rows
    finally:
        if started_here:
            ray.shutdown()
