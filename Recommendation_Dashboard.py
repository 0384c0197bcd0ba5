"""finrec dashboard: ``streamlit run Recommendation_Dashboard.py``.

Environment: ``FINREC_MODEL`` (model directory, default ``demo/model``) and ``FINREC_DATA``
(customer data; default: the training data recorded in the model's manifest). A thin adapter:
the logic lives in ``finrec.recommend`` and ``finrec.explain``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

st.set_page_config(page_title="finrec — product recommendations", layout="wide")

from finrec import explain as X  # noqa: E402
from finrec.artifacts import MANIFEST  # noqa: E402
from finrec.data import schema as S  # noqa: E402
from finrec.errors import FinrecError  # noqa: E402
from finrec.recommend import filters as F  # noqa: E402
from finrec.recommend.recommender import Recommender  # noqa: E402

K = 5
MAX_LISTED_IDS = 500
GLOBAL_SAMPLE = 50
EVALUATION_FILE = "model-evaluation.json"
DEFAULT_MODEL = os.environ.get("FINREC_MODEL", "demo/model")
ACCENT = "#1f4e79"


@dataclass
class Subject:
    """The customer on screen: a known one (``customer_id``) or an uploaded profile."""

    key: str
    label: str
    row: dict
    holdings: list[str] = field(default_factory=list)
    customer_id: str | None = None

    def request(self, changes: dict | None = None):
        """What ``Recommender.recommend`` takes for this customer (the id when unchanged)."""
        if self.customer_id is not None and not changes:
            return self.customer_id
        return {**self.row, **(changes or {}), S.HOLDINGS: list(self.holdings)}


# ------------------------------------------------------------------------------------ caches
@st.cache_resource(show_spinner="Loading the model…")
def load_recommender(model_dir: str, data_dir: str | None) -> Recommender:
    return Recommender.load(model_dir, data_dir)


@st.cache_resource(show_spinner=False)
def load_explainer(model_dir: str, data_dir: str | None) -> X.CustomerExplainer:
    return X.CustomerExplainer(load_recommender(model_dir, data_dir), max_background=100, seed=0)


@st.cache_resource(show_spinner=False)
def load_projection(model_dir: str, data_dir: str | None) -> X.EmbeddingProjection:
    return X.EmbeddingProjection.fit(load_recommender(model_dir, data_dir).product_embeddings)


@st.cache_data(show_spinner=False, max_entries=256)
def shap_explanation(
    model_dir: str,
    data_dir: str | None,
    subject_key: str,
    x: tuple,
    holdings: tuple,
    product_id: str,
    customer_id: str | None = None,
) -> dict:
    """SHAP values of one customer for one product (cached per customer and product); a known
    customer's history is held fixed with the holdings, as their recommendation was scored."""
    shap = X.load_shap()
    explainer = load_explainer(model_dir, data_dir)
    row = np.asarray([x], dtype="float64")
    score = explainer.score_function(product_id, holdings, customer_id)
    start = time.perf_counter()
    values = shap.PermutationExplainer(score, explainer.background_matrix())(row, silent=True)
    seconds = time.perf_counter() - start
    return {
        "values": values.values[0].astype(float).tolist(),
        "base": float(np.ravel(values.base_values)[0]),
        "score": float(score(row)[0]),
        "seconds": seconds,
    }


@st.cache_data(show_spinner=False, max_entries=16)
def global_importance(
    model_dir: str, data_dir: str | None, product_id: str, n: int = GLOBAL_SAMPLE, seed: int = 0
) -> pd.DataFrame:
    """Mean |SHAP| per feature over ``n`` sampled customers (each with their own holdings)."""
    shap = X.load_shap()
    rec = load_recommender(model_dir, data_dir)
    explainer = load_explainer(model_dir, data_dir)
    known = rec.known_customers
    ids = known[rec.schema.customers.id].to_numpy()[~explainer.objected(known)]  # only those who did not object
    pick = np.random.default_rng(seed).choice(len(ids), size=min(n, len(ids)), replace=False)
    background = explainer.background_matrix()[:50]
    rows = []
    for customer_id in ids[pick]:
        x, held = explainer.known_customer(customer_id)
        score = explainer.score_function(product_id, held, customer_id)
        values = shap.PermutationExplainer(score, background)(
            x, max_evals=4 * len(explainer.feature_names) + 1, silent=True
        )
        rows.append(np.abs(values.values[0]))
    mean = np.mean(rows, axis=0)
    return pd.DataFrame({"feature": explainer.feature_names, "mean_abs_shap": mean}).sort_values(
        "mean_abs_shap", ascending=False
    )


@st.cache_data(show_spinner=False)
def population_frame(model_dir: str, data_dir: str | None) -> pd.DataFrame:
    return load_recommender(model_dir, data_dir).known_customers


@st.cache_data(show_spinner=False)
def sensitivity_ranking(model_dir: str, data_dir: str | None) -> list[str] | None:
    """Numeric features by a cheap global importance (shuffling each one); None without customers."""
    if len(load_recommender(model_dir, data_dir).known_customers) == 0:
        return None
    return list(load_explainer(model_dir, data_dir).numeric_sensitivity().index)


def display_plan(model_dir: str, data_dir: str | None, rec: Recommender) -> X.DisplayPlan:
    """The columns shown for this schema: its display hints, else ranked by global SHAP once it
    has been computed on the Explain tab, by the cheap proxy before."""
    state = st.session_state.get("global")
    ranking = list(state["frame"]["feature"]) if state else sensitivity_ranking(model_dir, data_dir)
    return X.display_plan(rec, ranking)


def shown_path(path: str | Path | None) -> str:
    """A path for the page: relative to the working directory when inside it, else its last two
    parts (the page never shows where a server keeps its files)."""
    if path is None:
        return "—"
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(Path(*path.parts[-2:])) if len(path.parts) >= 2 else path.name


# ------------------------------------------------------------------------------------ start
def check_demo_targets(model_dir: Path) -> None:
    """Refuse, before anything is written, a demo build that would overwrite an input (the data
    in FINREC_DATA, the model in FINREC_MODEL when another one is being built) or a directory of
    other files, or whose model directory is one of the demo's own outputs."""
    from finrec.atomic import check_writable, refuse_overlap

    root = model_dir.parent
    bank, split, evaluation = root / "bank", root / "split", root / EVALUATION_FILE
    inputs = {"the data in FINREC_DATA": os.environ.get("FINREC_DATA") or None}
    if (Path(DEFAULT_MODEL) / MANIFEST).is_file() and Path(DEFAULT_MODEL).resolve() != model_dir.resolve():
        inputs["the model in FINREC_MODEL"] = DEFAULT_MODEL
    outputs = [
        (bank, "directory", S.SCHEMA_FILE),
        (split / "train", "directory", S.SCHEMA_FILE),
        (split / "test", "directory", S.SCHEMA_FILE),
        (model_dir, "directory", MANIFEST),
        (evaluation, "file", None),
    ]
    for path, kind, marker in outputs:
        refuse_overlap(path, inputs, what="the demo's output")
        check_writable(path, kind, marker=marker, what="the demo's output")
    refuse_overlap(
        model_dir,
        {"the demo bank": bank, "the demo split": split, "the evaluation file": evaluation},
        what="the model directory",
    )


def build_demo(model_dir: Path) -> None:
    """Generate the synthetic bank, split it, train the default model and evaluate it."""
    from finrec.artifacts import save_model_dir
    from finrec.atomic import atomic_file
    from finrec.config import Config
    from finrec.data.io import dataset_tables, fingerprint, load_dataset, write_dataset
    from finrec.data.split import split_dataset
    from finrec.data.synthetic import GeneratorSettings, generate
    from finrec.evaluate.report import evaluate
    from finrec.training import fit

    root = model_dir.parent
    bank, split = root / "bank", root / "split"
    check_demo_targets(model_dir)
    status = st.status("Building the demo bank…", expanded=True)
    status.write(f"Generating {GeneratorSettings().n_customers:,} synthetic customers into `{bank}`")
    write_dataset(generate(GeneratorSettings()), S.SYNTHETIC.schema(), bank)
    status.write(f"Splitting by customer into `{split}/train` and `{split}/test`")
    dataset = load_dataset(bank)
    train_data, test_data = split_dataset(dataset)
    write_dataset(dataset_tables(train_data), dataset.schema, split / "train")
    write_dataset(dataset_tables(test_data), dataset.schema, split / "test")
    config = Config()
    epochs = config.training.epochs
    bar = st.progress(0.0, text="Training the two-tower model…")
    monitor = f"val_ndcg@{config.training.eval_k}"

    import keras

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(monitor)
            text = f"epoch {epoch + 1}/{epochs}" + (
                f" · validation nDCG@{config.training.eval_k} {value:.4f}" if value is not None else ""
            )
            bar.progress(min(1.0, (epoch + 1) / epochs), text=text)

    trained = fit(load_dataset(split / "train"), config, verbose=0, callbacks=[Progress()])
    bar.progress(1.0, text="Training finished (early stopping restores the best epoch)")
    from finrec.governance.monitor import reference_for

    train_data = load_dataset(split / "train")
    save_model_dir(
        trained,
        model_dir,
        data_fingerprint=fingerprint(split / "train"),
        data_path=str((split / "train").resolve()),
        monitoring=reference_for(trained, train_data, k=K, seed=config.training.seed),
    )
    status.write("Evaluating on the held-out customers")
    results = evaluate(trained, load_dataset(split / "test"), k=K)
    with atomic_file(root / EVALUATION_FILE) as handle:
        json.dump({"k": K, "data": str(split / "test"), "results": results}, handle, indent=1)
    status.update(label="Demo bank and model ready", state="complete")


def start_panel(model_dir: str) -> None:
    from finrec.data.synthetic import GeneratorSettings

    bank = GeneratorSettings()
    with st.container(border=True):
        st.subheader("No model yet")
        st.markdown(
            f"There is no finrec model at `{model_dir}`. One click builds the synthetic demo bank "
            f"({bank.n_customers:,} customers, {bank.n_products:,} products) next to it, splits it by customer, "
            f"trains the default two-tower model and evaluates it on the held-out customers (a few minutes on "
            f"2 cores). Or enter another model directory in the sidebar."
        )
        if st.button("Build the demo bank and train the default model", type="primary", key="build"):
            build_demo(Path(model_dir))
            st.session_state["built_data"] = str(Path(model_dir).parent / "bank")
            st.rerun()


# ------------------------------------------------------------------------------------ sidebar
def choose_customer(rec: Recommender, plan: X.DisplayPlan) -> Subject | None:
    schema = rec.schema.customers
    cid = schema.id
    st.sidebar.header("Customer")
    sources = ["Existing customer", "Upload CSV"]
    source = st.sidebar.radio("Source", sources, key="source", horizontal=True)
    if source == sources[1]:
        return uploaded_customer(rec)
    customers = rec.known_customers
    if len(customers) == 0:
        moved = f" (its training data `{shown_path(rec.missing_data)}` is no longer there)" if rec.missing_data else ""
        st.sidebar.warning(f"No customer data is loaded with this model{moved}: upload customer profiles instead.")
        return None
    keep = np.ones(len(customers), dtype=bool)
    search = st.sidebar.text_input(
        "Search by customer id", key="search", placeholder=f"e.g. {customers[cid].iloc[0]}"
    ).strip()
    if search:
        keep &= customers[cid].astype(str).str.contains(search, case=False, regex=False).to_numpy()
    with st.sidebar.expander("Segment filters", expanded=False):
        categorical = [c for c in plan.segments if c in customers]
        if categorical:
            segment = st.selectbox("Segment", categorical, index=0, key="segment", format_func=plan.label)
            values = sorted(customers[segment].dropna().astype(str).unique())
            chosen = st.multiselect(f"{plan.label(segment)} is", values, key=f"segment_values_{segment}")
            if chosen:
                keep &= customers[segment].astype(str).isin(chosen).to_numpy()
        age = pd.to_numeric(customers[S.AGE], errors="coerce").to_numpy(dtype="float64") if S.AGE in customers else None
        if age is not None and np.isfinite(age).any():
            lo, hi = int(np.nanmin(age)), int(np.ceil(np.nanmax(age)))
            band = st.slider("Age band", lo, max(hi, lo + 1), (lo, max(hi, lo + 1)), key="age_band")
            keep &= (age >= band[0]) & (age <= band[1])
        if schema.risk and schema.risk in customers:
            band = st.slider(plan.label(schema.risk), S.RISK_MIN, S.RISK_MAX, (S.RISK_MIN, S.RISK_MAX), key="risk_band")
            risk = customers[schema.risk].to_numpy(dtype="float64")
            keep &= (risk >= band[0]) & (risk <= band[1])
    matches = customers[cid].astype(str).to_numpy()[keep]
    st.sidebar.caption(
        f"{len(matches):,} of {len(customers):,} customers match"
        + (f"; the first {MAX_LISTED_IDS} are listed" if len(matches) > MAX_LISTED_IDS else "")
    )
    if len(matches) == 0:
        st.sidebar.warning("No customer matches these filters.")
        return None
    customer_id = st.sidebar.selectbox("Customer id", list(matches[:MAX_LISTED_IDS]), key="customer_id")
    profile = rec.customer_profile(customer_id)
    return Subject(
        key=f"id:{customer_id}",
        label=f"Customer {customer_id}",
        row=profile["attributes"],
        holdings=list(profile["holdings"]),
        customer_id=customer_id,
    )


def uploaded_customer(rec: Recommender) -> Subject | None:
    upload = st.sidebar.file_uploader(
        f"Customer profiles (CSV, at most {X.MAX_UPLOAD_BYTES // 1024**2} MB)", type=["csv"], key="upload"
    )
    st.sidebar.caption(
        "One row per customer with the id and every customer column of the model's schema. "
        "The file stays in memory and is never written to disk."
    )
    if upload is None:
        st.info("Upload a CSV of customer profiles in the sidebar to see their recommendations.")
        return None
    data = upload.getvalue()
    try:
        frame = X.read_customer_upload(data, rec.schema, name=upload.name)
    except FinrecError as exc:
        st.error(f"The upload was refused: {exc}")
        return None
    cid = rec.schema.customers.id
    ids = frame[cid].astype(str).tolist()
    chosen = st.sidebar.selectbox("Uploaded customer", ids, key="upload_customer")
    row = frame.iloc[ids.index(chosen)].to_dict()
    row = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
    row = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
    digest = hashlib.sha256(data).hexdigest()[:12]
    st.sidebar.success(f"{len(frame)} profile(s) read from {upload.name}")
    return Subject(key=f"upload:{digest}:{chosen}", label=f"Uploaded customer {chosen}", row=row)


def choose_filters(rec: Recommender) -> F.Filters:
    st.sidebar.header("Filters")
    preset = st.sidebar.radio("Preset", F.PRESET_NAMES, key="preset", horizontal=True, help=F.PRESET_HELP)
    categories = st.sidebar.multiselect(
        "Only these categories", rec.catalogue.categories, key="categories", help="empty = every category"
    )
    exclude_held = st.sidebar.checkbox("Exclude products already held", value=True, key="exclude_held")
    return F.Filters.build({"preset": preset, "include_categories": list(categories), "exclude_held": exclude_held})


# ------------------------------------------------------------------------------------ tabs
def tolerance_of(rec: Recommender, subject: Subject):
    return subject.row.get(rec.schema.customers.risk) if rec.schema.customers.risk else None


def recommendations_tab(rec: Recommender, plan: X.DisplayPlan, subject: Subject, filters: F.Filters, result) -> None:
    tolerance = tolerance_of(rec, subject)
    top = f"{result.items[0].score:.3f}" if result.items else "—"
    metrics = [
        ("Eligible products", f"{result.eligible} of {len(rec.pipeline.product_ids_)}"),
        ("Preset", (filters.preset or "balanced").replace("_", " ")),
    ]
    if rec.schema.customers.risk:
        metrics.append(
            (
                plan.label(rec.schema.customers.risk),
                "unknown" if tolerance is None else f"{int(tolerance)} / {S.RISK_MAX}",
            )
        )
    metrics.append((f"Best match ({'cosine' if rec.blend is None else 'blended score'})", top))
    for cell, (label, value) in zip(st.columns(len(metrics)), metrics):
        cell.metric(label, value)
    if result.message:
        st.warning(f"Fewer than {K} recommendations: {result.message}.")
    if not result.items:
        return
    table = X.recommendations_table(result, plan, rec.schema, tolerance)
    category = rec.schema.products.category
    columns = st.columns(len(result.items))
    for column, item, record in zip(columns, result.items, table.to_dict("records")):
        with column.container(border=True):
            st.markdown(f"**#{item.rank} · {plan.title(item.product, item.product_id)}**")
            kind = X.display_value(item.product.get(category)) if category else None
            if kind:
                st.caption(kind.replace("_", " "))
            st.metric("Similarity" if rec.blend is None else "Score", f"{item.score:.3f}")
            details = [f"{label} **{text}**" for label, text in X.product_fields(item.product, plan, rec.schema)]
            terms = X.product_terms(item.product)
            if terms:
                details.append(f"Terms: {terms}")
            if details:
                st.markdown("  \n".join(details))
            if "suitability" in record:
                st.markdown(record["suitability"])
    config = {"score": st.column_config.ProgressColumn("score", min_value=-1.0, max_value=1.0, format="%.3f")}
    config.update({c: st.column_config.Column(plan.label(c)) for c in table.columns if c in plan.product_details})
    st.dataframe(table, hide_index=True, width="stretch", key="recommendations_table", column_config=config)
    with st.expander("Why not the other products? (audit of every product)"):
        audit = rec.audit(subject.request(), filters)
        text = [c for c in audit.columns if not pd.api.types.is_numeric_dtype(audit[c])]
        # An eligible product's empty excluded_by showed as "None": "—", as in the table above.
        st.dataframe(audit.fillna(dict.fromkeys(text, "—")), hide_index=True, width="stretch")


def metric_grid(cells: list[tuple[str, str]], per_row: int = 4) -> None:
    for first in range(0, len(cells), per_row):
        row = cells[first : first + per_row]
        for cell, (label, value) in zip(st.columns(per_row), row):
            cell.metric(label, value)


def profile_tab(rec: Recommender, plan: X.DisplayPlan, subject: Subject, population: pd.DataFrame) -> None:
    schema = rec.schema.customers
    row = subject.row
    cells = [
        (plan.label(c), (X.display_value(row.get(c)) or "—").replace("_", " "))
        for c in (*plan.profile, *plan.segments[:2])
    ]
    if cells:
        metric_grid(cells)
    left, right = st.columns([3, 2])
    with left:
        st.markdown("##### Where this customer stands among all customers")
        ranks = X.percentile_ranks(population, row, plan.profile)
        if len(ranks):
            labels = [
                f"{plan.label(c)} ({X.display_value(v) or 'missing'})" for c, v in zip(ranks.feature, ranks.value)
            ]
            fig = go.Figure(
                go.Bar(
                    x=ranks.percentile,
                    y=labels,
                    orientation="h",
                    marker_color=ACCENT,
                    text=[f"{p:.0f}th pct" if not np.isnan(p) else "missing" for p in ranks.percentile],
                    textposition="auto",
                )
            )
            fig.update_layout(
                xaxis=dict(range=[0, 100], title="percentile"),
                height=300,
                margin=dict(l=10, r=10, t=10, b=10),
                yaxis=dict(autorange="reversed"),
            )
            st.plotly_chart(fig, width="stretch", key="percentiles")
    with right:
        tolerance = tolerance_of(rec, subject)
        if schema.risk:
            st.markdown(f"##### {plan.label(schema.risk)}")
            gauge = go.Figure(
                go.Indicator(
                    mode="gauge+number",
                    value=float(tolerance) if tolerance is not None else 0,
                    gauge=dict(
                        axis=dict(range=[S.RISK_MIN, S.RISK_MAX], dtick=1),
                        bar=dict(color=ACCENT),
                        steps=[
                            dict(range=[1, 3], color="#d9f0d3"),
                            dict(range=[3, 5], color="#fff3c4"),
                            dict(range=[5, 7], color="#f8d0c8"),
                        ],
                    ),
                    number=dict(suffix=" / 7"),
                )
            )
            gauge.update_layout(height=220, margin=dict(l=20, r=20, t=10, b=10))
            st.plotly_chart(gauge, width="stretch", key="risk_gauge")
        st.markdown("##### Holdings")
        if subject.holdings:
            positions = rec.pipeline.product_positions(subject.holdings)
            category = rec.schema.products.category
            held = []
            for product_id, i in zip(subject.holdings, positions):
                held.append({rec.schema.products.id: product_id, "name": plan.title(rec.products[i], product_id)})
                if category:
                    held[-1][category] = X.display_value(rec.products[i].get(category)) or "—"
            held = pd.DataFrame(held)
            st.dataframe(held, hide_index=True, width="stretch")
        else:
            st.caption(
                "No products held" + (" (uploaded profiles carry no holdings)" if subject.customer_id is None else "")
            )
    with st.expander("All attributes"):
        values = [X.display_value(v) or "—" for v in row.values()]
        st.dataframe(pd.DataFrame({"value": values}, index=[str(k) for k in row]), width="stretch")


def what_if_tab(rec: Recommender, plan: X.DisplayPlan, subject: Subject, filters: F.Filters, result) -> None:
    row = subject.row
    population = rec.known_customers
    st.markdown(f"Change the customer's situation and compare the new top {K} with the current one.")
    if not plan.what_if:
        st.info("This schema has no numeric customer feature to change.")
        return
    specs = [X.slider_spec(c, row.get(c), population, rec.schema, plan.label(c)) for c in plan.what_if]
    changed: dict = {}
    per_row = 4
    for first in range(0, len(specs), per_row):
        for cell, spec in zip(st.columns(per_row), specs[first : first + per_row]):
            value = cell.slider(
                spec.label, spec.low, spec.high, spec.value, step=spec.step, key=f"wi_{spec.column}_{subject.key}"
            )
            if value != spec.value:
                changed[spec.column] = value
    if subject.customer_id is not None and changed:
        # A known customer keeps their holdings and history: a dict of features is a new customer.
        after = rec.what_if(subject.customer_id, changed, k=K, filters=filters)
    else:
        after = rec.recommend(subject.request(changed), k=K, filters=filters)
    before_ids = [i.product_id for i in result.items]
    after_ids = [i.product_id for i in after.items]
    left, right = st.columns(2)
    with left:
        st.markdown(f"##### Current top {K}")
        current = [
            {"rank": i.rank, "product": plan.title(i.product, i.product_id), "score": round(i.score, 4)}
            for i in result.items
        ]
        st.dataframe(pd.DataFrame(current), hide_index=True, width="stretch")
    with right:
        st.markdown(f"##### What-if top {K}" + (" (unchanged inputs)" if not changed else ""))
        marks = X.rank_changes(before_ids, after_ids)
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "rank": i.rank,
                        "product": plan.title(i.product, i.product_id),
                        "score": round(i.score, 4),
                        "move": m,
                    }
                    for i, m in zip(after.items, marks)
                ]
            ),
            hide_index=True,
            width="stretch",
            key="whatif_table",
        )
    dropped = [plan.title(i.product, i.product_id) for i in result.items if i.product_id not in after_ids]
    if dropped:
        st.caption(f"Dropped out of the top {K}: " + ", ".join(dropped))
    if after.message:
        st.warning(after.message)


def embeddings_tab(
    model_dir: str, data_dir: str | None, rec: Recommender, plan: X.DisplayPlan, subject: Subject, result
) -> None:
    explainer = load_explainer(model_dir, data_dir)
    projection = load_projection(model_dir, data_dir)
    x = explainer.encode(pd.DataFrame([subject.row]))
    customer = explainer.embed(x, subject.holdings, subject.customer_id)[0]
    points = projection.transform(rec.product_embeddings)
    me = projection.transform(customer)[0]
    recommended = {i.product_id for i in result.items}
    ids = list(rec.pipeline.product_ids_)
    names = [plan.title(p, pid) for p, pid in zip(rec.products, ids)]
    category = rec.schema.products.category
    kinds = [(X.display_value(p.get(category)) or "") if category else "" for p in rec.products]
    fig = go.Figure()
    for kind in sorted(set(kinds)):
        index = [j for j, k in enumerate(kinds) if k == kind]
        fig.add_trace(
            go.Scatter(
                x=points[index, 0],
                y=points[index, 1],
                mode="markers",
                name=kind.replace("_", " ") or "products",
                marker=dict(size=11, opacity=0.75),
                text=[names[j] for j in index],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    top = [j for j, pid in enumerate(ids) if pid in recommended]
    fig.add_trace(
        go.Scatter(
            x=points[top, 0],
            y=points[top, 1],
            mode="markers+text",
            name="recommended",
            marker=dict(size=20, symbol="circle-open", line=dict(width=3, color="#d62728")),
            text=[names[j] for j in top],
            textposition="top center",
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[me[0]],
            y=[me[1]],
            mode="markers+text",
            name="this customer",
            text=["customer"],
            textposition="bottom center",
            marker=dict(size=22, symbol="star", color="#111111"),
        )
    )
    share = projection.explained
    fig.update_layout(
        height=520,
        margin=dict(l=10, r=10, t=30, b=10),
        xaxis_title=f"PC 1 ({share[0]:.0%} of variance)",
        yaxis_title=f"PC 2 ({share[1]:.0%} of variance)",
    )
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(fig, width="stretch", key="embedding_map")
        st.caption(
            "The first two principal components of the product embeddings; the customer is projected the same way. "
            "Distances on the map are approximate; the "
            + ("cosine similarities" if rec.blend is None else "blended scores (the trees' part included)")
            + " in the table are exact."
        )
    with right:
        st.markdown("##### Nearest products (any eligibility)")
        near = X.nearest_products(customer, rec.product_embeddings, ids, k=10)
        near.insert(1, "product", [names[ids.index(p)] for p in near[S.PRODUCT_ID]])
        near["recommended"] = ["✅" if p in recommended else "" for p in near[S.PRODUCT_ID]]
        st.dataframe(near.round(4), hide_index=True, width="stretch")


def shap_chart(explainer: X.CustomerExplainer, texts: list[str], values: np.ndarray, title: str) -> go.Figure:
    labels = [f"{name} = {text}" for name, text in zip(explainer.feature_names, texts)]
    order = np.argsort(np.abs(values))
    colors = ["#2ca02c" if v > 0 else "#d62728" for v in values[order]]
    fig = go.Figure(
        go.Bar(
            x=values[order],
            y=[labels[i] for i in order],
            orientation="h",
            marker_color=colors,
            text=[f"{v:+.4f}" for v in values[order]],
            textposition="auto",
        )
    )
    fig.update_layout(
        title=title,
        height=max(360, 24 * len(values)),
        margin=dict(l=10, r=10, t=40, b=10),
        xaxis_title="contribution to the score",
    )
    return fig


def explain_tab(
    model_dir: str, data_dir: str | None, rec: Recommender, plan: X.DisplayPlan, subject: Subject, result
) -> None:
    if not result.items:
        st.info("No recommendation to explain under these filters.")
        return
    explainer = load_explainer(model_dir, data_dir)
    if len(explainer.background) == 0:
        st.info(
            "No customers to explain against: SHAP compares this customer with the model's customer data "
            "(those who did not object to profiling), and none is loaded."
        )
        return
    options = {
        f"#{i.rank} · {plan.title(i.product, i.product_id)} ({i.product_id})": i.product_id for i in result.items
    }
    label = st.selectbox("Recommended product", list(options), key="shap_product")
    product_id = options[label]
    st.caption(
        "Permutation SHAP: each feature's contribution to this customer's score for the product, against "
        f"{len(explainer.background_matrix())} background customers; the holdings are held fixed."
    )
    explainer.refuse_objected(pd.DataFrame([subject.row]))
    x = explainer.encode(pd.DataFrame([subject.row]))
    request = (subject.key, product_id)
    if st.button("Explain this recommendation", type="primary", key="shap_button"):
        start = time.perf_counter()
        with st.spinner("Computing SHAP values…"):
            out = shap_explanation(
                model_dir,
                data_dir,
                subject.key,
                tuple(x[0].tolist()),
                tuple(subject.holdings),
                product_id,
                subject.customer_id,
            )
        st.session_state["shap"] = {"request": request, "out": out, "wall": time.perf_counter() - start}
    state = st.session_state.get("shap")
    if state and state["request"] == request:
        out = state["out"]
        values = np.asarray(out["values"])
        gap = X.additivity_gap(out["base"], values, out["score"])
        st.plotly_chart(
            shap_chart(
                explainer,
                explainer.value_labels(pd.DataFrame([subject.row])),
                values,
                f"Why {label.split(' · ', 1)[1]}",
            ),
            width="stretch",
            key="shap_chart",
        )
        line = (
            f"base value {out['base']:.4f} + sum of contributions {values.sum():+.4f} = {out['base'] + values.sum():.4f}, "
            f"model score = {out['score']:.4f} (difference {gap:.1e}"
        )
        if gap < 1e-4:
            st.success(line + " < 1e-4)")
        else:
            st.warning(line + " ≥ 1e-4): the explanation does not add up to the score")
        st.caption(f"Explained in {state['wall']:.2f} s (SHAP {out['seconds']:.2f} s; repeated requests are cached).")
    st.divider()
    st.markdown(f"##### Global view: mean |SHAP| over {GLOBAL_SAMPLE} customers for {label.split(' · ', 1)[1]}")
    key = ("global", product_id)
    if st.button("Compute the global importance", key="global_button"):
        with st.spinner(f"Explaining {GLOBAL_SAMPLE} customers…"):
            st.session_state["global"] = {"key": key, "frame": global_importance(model_dir, data_dir, product_id)}
    state = st.session_state.get("global")
    if state and state["key"] == key:
        frame = state["frame"].iloc[::-1]
        fig = go.Figure(go.Bar(x=frame.mean_abs_shap, y=frame.feature, orientation="h", marker_color=ACCENT))
        fig.update_layout(
            height=max(360, 22 * len(frame)), margin=dict(l=10, r=10, t=10, b=10), xaxis_title="mean |SHAP|"
        )
        st.plotly_chart(fig, width="stretch", key="global_chart")


def evaluation_data_dir(rec: Recommender, model_dir: str, data_dir: str | None) -> Path | None:
    """Held-out data next to the model's training split when there is one, else the loaded data."""
    from finrec.artifacts import read_manifest

    recorded = read_manifest(model_dir, verify=False).get("data_path")
    if recorded and (Path(recorded).parent / "test").is_dir():
        return Path(recorded).parent / "test"
    if data_dir:
        return Path(data_dir)
    # A model whose training data has moved has nothing to evaluate on until it is named.
    return Path(recorded) if recorded and Path(recorded).is_dir() else None


@st.cache_data(show_spinner="Evaluating…")
def compute_evaluation(model_dir: str, data_dir: str | None, eval_dir: str) -> dict:
    from finrec.data.io import load_dataset
    from finrec.evaluate.report import evaluate

    rec = load_recommender(model_dir, data_dir)
    return {"k": K, "data": eval_dir, "results": evaluate(rec.trained, load_dataset(eval_dir), k=K)}


def model_tab(model_dir: str, data_dir: str | None, rec: Recommender) -> None:
    config = rec.trained.config
    history = rec.trained.history
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Products", len(rec.pipeline.product_ids_))
    c2.metric("Known customers", f"{len(rec.known_customers):,}")
    c3.metric("Embedding size", rec.tower.embedding_dim)  # the towers' (a tree blend lengthens the vectors)
    c4.metric("Epochs trained", len(history.get("loss", [])))
    st.markdown("##### Ranking quality")
    path = Path(model_dir).resolve().parent / EVALUATION_FILE
    evaluation = None
    if path.is_file():
        try:
            evaluation = json.loads(path.read_text(encoding="utf-8"))
            if not (isinstance(evaluation, dict) and isinstance(evaluation.get("results"), dict)):
                raise ValueError("not written by `finrec evaluate --json`")
            st.caption(f"From `{shown_path(path)}` (data: `{shown_path(evaluation.get('data'))}`)")
        except (OSError, ValueError, RecursionError) as exc:  # a damaged or foreign file: say so, evaluate anew
            evaluation = None
            st.warning(f"{shown_path(path)}: cannot read it ({type(exc).__name__})")
    if evaluation is None:
        eval_dir = evaluation_data_dir(rec, model_dir, data_dir)
        if eval_dir is None:
            st.info("No evaluation file and no data to evaluate on.")
        else:
            st.caption(
                f"No `{EVALUATION_FILE}` next to the model. Evaluate on `{shown_path(eval_dir)}`"
                + ("" if eval_dir.name == "test" else " (customers the model may have seen: optimistic)")
            )
            if st.button("Compute the evaluation", key="evaluate_button") or st.session_state.get("evaluated") == str(
                eval_dir
            ):
                evaluation = compute_evaluation(model_dir, data_dir, str(eval_dir))
                st.session_state["evaluated"] = str(eval_dir)
    if evaluation:
        table = pd.DataFrame(evaluation["results"]).T
        if "customers" in table:  # a count: the transpose made it a float like every metric
            table["customers"] = pd.to_numeric(table["customers"], errors="coerce").round().astype("Int64")
        st.dataframe(
            table.style.format("{:.4f}", subset=[c for c in table.columns if c != "customers"]),
            width="stretch",
            key="evaluation_table",
        )
    st.markdown("##### Training curves")
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    monitor = f"val_ndcg@{config.training.eval_k}"
    left, right = st.columns(2)
    if len(epochs):
        loss = go.Figure(go.Scatter(x=epochs, y=history["loss"], mode="lines+markers", line_color=ACCENT))
        loss.update_layout(title="training loss", xaxis_title="epoch", height=300, margin=dict(l=10, r=10, t=40, b=10))
        left.plotly_chart(loss, width="stretch", key="loss_curve")
    if history.get(monitor):
        ndcg = go.Figure(go.Scatter(x=epochs, y=history[monitor], mode="lines+markers", line_color="#2ca02c"))
        ndcg.update_layout(
            title=f"validation nDCG@{config.training.eval_k}",
            xaxis_title="epoch",
            height=300,
            margin=dict(l=10, r=10, t=40, b=10),
        )
        right.plotly_chart(ndcg, width="stretch", key="ndcg_curve")
    with st.expander("Configuration"):
        st.json(config.to_dict())


# ------------------------------------------------------------------------------------ monitoring
STATUS_MARK = {"ok": "🟢 ok", "warn": "🟠 warn", "alert": "🔴 alert"}


@st.cache_data(show_spinner="Comparing with the training population…", max_entries=8)
def compute_monitoring(model_dir: str, check_dir: str) -> dict:
    from finrec.governance.monitor import monitor_model

    return monitor_model(model_dir, check_dir)


def monitoring_tab(model_dir: str, data_dir: str | None, rec: Recommender) -> None:
    """``finrec monitor`` on a scoring population: PSI per feature, the scores and the recommended mix."""
    from finrec.artifacts import read_monitoring

    if read_monitoring(model_dir) is None:
        st.info(
            "This model predates monitoring (no `monitoring.json`): retrain it with `finrec train` to record "
            "the training population, then compare new customers with it here."
        )
        return
    default = evaluation_data_dir(rec, model_dir, data_dir)
    check_dir = st.text_input(
        "Scoring population (a dataset directory)", value=str(default or ""), key="monitor_data"
    ).strip()
    if not check_dir:
        return
    if not (
        st.button("Check for drift", key="monitor_button")
        or st.session_state.get("monitored") == (model_dir, check_dir)
    ):
        st.caption(
            "Population stability index (PSI) of each customer feature, of the scores and of the recommended "
            "product mix against the training population: ok below 0.10, warn below 0.25, alert above."
        )
        return
    st.session_state["monitored"] = (model_dir, check_dir)
    report = compute_monitoring(model_dir, check_dir)
    summary = report["summary"]
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Customers checked", f"{report['customers']:,}")
    c2.metric("ok", summary["ok"])
    c3.metric("warn", summary["warn"])
    c4.metric("alert", summary["alert"])
    rows = [{"feature": name, **entry} for name, entry in report["features"].items()]
    rows += [
        {"feature": "(model scores)", **report["scores"]},
        {"feature": "(recommended mix)", **report["recommendations"]},
    ]
    table = pd.DataFrame(rows)
    table["status"] = table["status"].map(STATUS_MARK)
    columns = [
        c
        for c in (
            "feature",
            "kind",
            "psi",
            "status",
            "missing_share",
            "reference_missing_share",
            "unseen_share",
            "mean",
            "reference_mean",
        )
        if c in table
    ]
    table = table[columns].sort_values("psi", ascending=False, na_position="first")
    st.dataframe(table, hide_index=True, width="stretch", key="monitoring_table")
    chart = table.dropna(subset=["psi"]).iloc[::-1]
    colors = ["#d62728" if v >= 0.25 else "#ff7f0e" if v >= 0.10 else "#2ca02c" for v in chart["psi"]]
    fig = go.Figure(go.Bar(x=chart["psi"], y=chart["feature"], orientation="h", marker_color=colors))
    for threshold in (0.10, 0.25):
        fig.add_vline(x=threshold, line_dash="dash", line_color="#888")
    fig.update_layout(height=max(320, 22 * len(chart)), margin=dict(l=10, r=10, t=10, b=10), xaxis_title="PSI")
    st.plotly_chart(fig, width="stretch", key="monitoring_chart")


# ------------------------------------------------------------------------------------ compliance
RECORDS = os.environ.get("FINREC_RECORDS") or None  # a record log of what the page shows


@st.cache_resource
def record_log(path: str):
    from finrec.governance.records import RecordLog

    return RecordLog(path)


def record_shown(rec: Recommender, subject: Subject, filters: F.Filters, result) -> None:
    """Append what this page shows to FINREC_RECORDS, once per customer and filters in a session
    (Streamlit reruns the page on every click; the recommendation shown is the same)."""
    if not RECORDS:
        return
    from finrec.governance.records import record_of

    key = (subject.key, repr(filters))
    if st.session_state.get("last_recorded") != key:
        record_log(RECORDS).append(record_of(result, rec.model_version))
        st.session_state["last_recorded"] = key


def objected_notice(model_dir: str, data_dir: str | None, rec: Recommender, subject: Subject, result) -> None:
    """A customer who objected to profiling: no recommendation, no what-if, no embedding, no SHAP."""
    st.warning(
        f"No recommendation: {result.message}. Their data is not used for what-if, embeddings or explanations either."
    )
    (tab,) = st.tabs(["Model"])
    with tab:
        model_tab(model_dir, data_dir, rec)


# ------------------------------------------------------------------------------------ page
# ------------------------------------------------------------------------------------ campaign
CAMPAIGN_SHARE = 0.01  # default capacity of each product: this share of the customers


@st.cache_resource(show_spinner="Scoring every customer for the campaign…", max_entries=4)
def campaign_problem(model_dir: str, data_dir: str | None, filters_json: str):
    from finrec.plan.campaign import build_problem

    rec = load_recommender(model_dir, data_dir)
    return build_problem(rec, rec.dataset.source, filters=json.loads(filters_json))


def campaign_tab(model_dir: str, data_dir: str | None, rec: Recommender, filters: F.Filters, display) -> None:
    """Set capacities and contacts; see the optimal plan against greedy, the shadow prices, and
    the offers per product and segment (``finrec plan`` on the customers loaded here)."""
    from dataclasses import asdict

    from finrec.plan.campaign import format_summary, plan_campaign, plan_table, summary

    if rec.calibration is None:
        st.info(
            "This model has no calibration, so no probabilities to plan with: retrain it, or run "
            "`finrec calibrate --model M --data HELD_OUT`."
        )
        return
    if rec.dataset is None or rec.dataset.source is None:
        st.info("No customer data is loaded to plan a campaign for.")
        return
    # A campaign never relaxes held products, suitability or the eligibility terms.
    filters = replace(filters, exclude_held=True, suitability=True, eligibility=True)
    filters_json = json.dumps(asdict(filters))
    problem = campaign_problem(model_dir, data_dir, filters_json)
    n = len(problem.customer_ids)
    st.caption(
        f"{n:,} customers x {len(problem.product_ids)} products; every filter in the sidebar applies "
        "(held products always excluded). Value per adoption: the schema's value column, else 1."
    )
    with st.form("campaign"):
        left, right = st.columns(2)
        contacts = left.number_input(
            "Contacts per customer", min_value=1, max_value=5, value=1, key="campaign_contacts"
        )
        floor = right.slider("Minimum probability", 0.0, 0.5, 0.0, 0.01, key="campaign_floor")
        default = max(1, int(round(CAMPAIGN_SHARE * n)))  # 1% of under 50 customers rounded to none
        limits = st.data_editor(
            pd.DataFrame({"product_id": problem.product_ids, "capacity": [default] * len(problem.product_ids)}),
            column_config={"capacity": st.column_config.NumberColumn(min_value=0, step=1, help="empty = unlimited")},
            disabled=["product_id"],
            hide_index=True,
            key="campaign_capacities",
            width="stretch",
        )
        planned = st.form_submit_button("Plan the campaign")
    if planned:
        capacity = pd.to_numeric(limits["capacity"], errors="coerce").to_numpy(dtype="float64")
        capacity = np.where(np.isnan(capacity), np.inf, np.floor(np.maximum(capacity, 0)))
        probability = np.where(problem.probability >= floor, problem.probability, 0).astype(np.float32)
        result = plan_campaign(replace(problem, probability=probability), capacity, int(contacts))
        st.session_state["campaign_plan"] = (
            (model_dir, data_dir, filters_json),
            summary(result),
            plan_table(result.problem, result.plan),
        )
    if "campaign_plan" not in st.session_state:
        st.info("Set the capacities and press **Plan the campaign**.")
        return
    made_for, info, table = st.session_state["campaign_plan"]
    if made_for != (model_dir, data_dir, filters_json):
        # A plan kept across a change of the sidebar's filters or model would offer what they now
        # exclude, under a caption that says every filter applies.
        st.info("The filters or the model changed since the last plan: press **Plan the campaign** to plan with them.")
        return
    plan, base = info["plan"], info["greedy"]
    a, b, c = st.columns(3)
    a.metric(
        "Expected value (optimal plan)",
        f"{plan['expected_value']:,.1f}",
        delta=f"{plan['expected_value'] - base['expected_value']:+,.1f} vs greedy",
    )
    b.metric(
        "Expected adoptions",
        f"{plan['expected_adoptions']:,.1f}",
        delta=f"{plan['expected_adoptions'] - base['expected_adoptions']:+,.1f} vs greedy",
    )
    c.metric("Proven gap to the best plan", f"{info['relative_gap']:.3%}")
    with st.expander("Summary as `finrec plan` prints it"):
        st.code(format_summary(info))
    if info["shadow_prices"]:
        st.markdown("**Binding capacities** — what one more slot is worth")
        st.dataframe(
            pd.DataFrame([{"product_id": pid, **row} for pid, row in info["shadow_prices"].items()]).sort_values(
                "price", ascending=False
            ),
            hide_index=True,
            key="campaign_prices",
        )
    # The schema's segments (its display plan), not the synthetic bank's names.
    segment = next((c for c in display.segments if c in rec.dataset.customers), None)
    offers = table
    if segment is not None:
        # The page's words for a value, "missing" for none (astype(str) made a column "nan"): each
        # distinct value worded once, not every customer's on every rerun.
        values = rec.dataset.customers.set_index(rec.schema.customers.id)[segment]
        codes, distinct = pd.factorize(values, use_na_sentinel=True)
        words = np.array([str(X.display_value(v) or "missing") for v in distinct] + ["missing"], dtype=object)
        segments = pd.Series(words[codes], index=values.index)  # code -1 (NA) is the last word
        offers = table.assign(**{segment: table["customer_id"].map(segments)})
        st.markdown(f"**Offers per product and {display.label(segment)}**")
        st.dataframe(
            pd.crosstab(offers["product_id"], offers[segment], margins=True, margins_name="total"),
            key="campaign_segments",
        )
    from finrec.data.io import escape_formulas

    st.download_button(
        "Download the plan (CSV)", escape_formulas(offers).to_csv(index=False).encode(), "plan.csv", "text/csv"
    )


def page() -> None:
    st.markdown(
        f"<h2 style='margin-bottom:0;color:{ACCENT}'>🏦 finrec · product recommendations</h2>"
        "<p style='color:#666;margin-top:0'>A two-tower model matches each customer with the bank's products; "
        "suitability and eligibility rules are applied before the top 5.</p>",
        unsafe_allow_html=True,
    )
    model_dir = st.sidebar.text_input("Model directory", value=DEFAULT_MODEL, key="model_dir").strip() or DEFAULT_MODEL
    if not (Path(model_dir) / MANIFEST).is_file():
        start_panel(model_dir)
        return
    # FINREC_DATA belongs to FINREC_MODEL; another model uses the data its manifest records, and a
    # model just built here uses the whole demo bank it was built from.
    data_dir = (os.environ.get("FINREC_DATA") or None) if model_dir == DEFAULT_MODEL else None
    built = st.session_state.get("built_data")
    if built and Path(built).parent == Path(model_dir).parent and not os.environ.get("FINREC_DATA"):
        data_dir = built
    rec = load_recommender(model_dir, data_dir)
    changes = rec.catalogue_changes
    if changes is not None:
        # Products the data's table lacks are never offered, yet are counted in "of 25" and
        # listed in the campaign's capacities: only the server's log said why.
        for note in replace(changes, source=shown_path(changes.source)).notes():
            st.info(note)
    plan = display_plan(model_dir, data_dir, rec)
    subject = choose_customer(rec, plan)
    filters = choose_filters(rec)
    names = ["Recommendations", "Profile", "What-if", "Embeddings", "Explain (SHAP)", "Model", "Campaign", "Monitoring"]
    if subject is None:
        tab, monitoring = st.tabs(["Model", "Monitoring"])
        with tab:
            model_tab(model_dir, data_dir, rec)
        with monitoring:
            monitoring_tab(model_dir, data_dir, rec)
        return
    start = time.perf_counter()
    result = rec.recommend(subject.request(), k=K, filters=filters)
    record_shown(rec, subject, filters, result)
    st.markdown(f"#### {subject.label}")
    if result.objected:
        objected_notice(model_dir, data_dir, rec, subject, result)
        return
    tabs = dict(zip(names, st.tabs(names)))
    with in_tab(tabs["Recommendations"]):
        recommendations_tab(rec, plan, subject, filters, result)
        st.caption(f"Recommended in {(time.perf_counter() - start) * 1000:.1f} ms")
    with in_tab(tabs["Profile"]):
        profile_tab(rec, plan, subject, population_frame(model_dir, data_dir))
    with in_tab(tabs["What-if"]):
        what_if_tab(rec, plan, subject, filters, result)
    with in_tab(tabs["Embeddings"]):
        embeddings_tab(model_dir, data_dir, rec, plan, subject, result)
    with in_tab(tabs["Explain (SHAP)"]):
        explain_tab(model_dir, data_dir, rec, plan, subject, result)
    with in_tab(tabs["Model"]):
        model_tab(model_dir, data_dir, rec)
    with in_tab(tabs["Campaign"]):
        campaign_tab(model_dir, data_dir, rec, filters, plan)
    with in_tab(tabs["Monitoring"]):
        monitoring_tab(model_dir, data_dir, rec)


@contextmanager
def in_tab(tab):
    """A ``FinrecError`` in one tab is said in that tab: the tabs after it still render (one
    raised to the page left them all blank)."""
    with tab:
        try:
            yield
        except FinrecError as exc:
            st.error(str(exc))


def _is_streamlit_control(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("streamlit")


try:
    page()
except FinrecError as exc:
    st.error(str(exc))
except Exception as exc:  # noqa: BLE001 - no raw tracebacks on the page
    if _is_streamlit_control(exc) or os.environ.get("FINREC_DEBUG"):
        raise
    st.error(f"Internal error: {type(exc).__name__}: {exc} (set FINREC_DEBUG=1 to see the traceback)")
