"""``gmcf-batch``: a thin command line over the runtime and the trainer."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from gmcf.runtime.errors import GmcfError
from gmcf.runtime.settings import DEFAULT_BATCH_SIZE

if TYPE_CHECKING:
    from gmcf.runtime.run_summary import RunRecord
    from gmcf.runtime.status import Summary

app = typer.Typer(
    help="Counterfactual explanations at scale: what would have to change for the decision to go "
    "the other way.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()

EXPORTED = Path(str(resources.files("gmcf.exported")))


def default_bundle() -> Path:
    """$GMCF_BUNDLE, else the shipped Adult bundle."""
    import os

    env = os.environ.get("GMCF_BUNDLE")
    return Path(env) if env else EXPORTED / "adult"


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
        disable=not err.is_terminal and not _force_progress(),
    )


def _force_progress() -> bool:
    import os

    return os.environ.get("GMCF_PROGRESS") == "1"


@app.command()
def explain(
    input: Annotated[
        Path,
        typer.Argument(
            help="Parquet file of queries, one row per applicant, or a folder of Parquet parts."
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Output Parquet file, or folder for a folder \\[default: INPUT.explained.parquet; "
            "INPUT.explained/].",
        ),
    ] = None,
    bundle: Annotated[
        Path | None, typer.Option(help="Bundle folder \\[default: the shipped Adult bundle].")
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Decision threshold T on f's score \\[default: the bundle's, see inspect]."
        ),
    ] = None,
    tol: Annotated[
        float | None,
        typer.Option(
            help="A counterfactual's score must lie in [T, T + tol) \\[default: the bundle's; with "
            "--threshold alone, 1 - T when the bundle accepts any score up to 1]."
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Points on the alpha grid in (0, 1].")] = None,
    refine: Annotated[
        bool | None,
        typer.Option("--refine/--no-refine", help="Bisect a crossing that overshoots T + tol."),
    ] = None,
    extrapolate: Annotated[
        bool | None,
        typer.Option(
            "--extrapolate/--no-extrapolate", help="Walk past mu_1 when the path never crosses T."
        ),
    ] = None,
    fallback: Annotated[
        bool | None,
        typer.Option(
            "--fallback/--no-fallback",
            help="Last resort for rows the walk misses: walk toward nearby approved training rows "
            "(search `anchored`).",
        ),
    ] = None,
    screen: Annotated[
        bool | None,
        typer.Option(
            "--screen/--no-screen",
            help="With a bundle that has a screen (a cheap stand-in of a costly f): walk with it "
            "and let f confirm the candidates it picks (--no-screen: every candidate scored by f).",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help=f"Rows read, searched and written at a time \\[default: {DEFAULT_BATCH_SIZE:,} "
            f"tabular rows; ~2,700 images]."
        ),
    ] = None,
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads per worker.")] = 1,
    workers: Annotated[
        int, typer.Option(help="Worker processes [default 0: one per core, at most one per batch].")
    ] = 0,
    id_column: Annotated[
        str | None, typer.Option(help="Column passed through to the output to identify rows.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite OUTPUT if it exists.")] = False,
    num_cfs: Annotated[
        int,
        typer.Option(
            help="Up to K distinct counterfactuals per rejected query, one row each, nearest first."
        ),
    ] = 1,
    constraints: Annotated[
        Path | None, typer.Option(help="TOML or JSON file of per-feature constraints.")
    ] = None,
    immutable: Annotated[
        list[str] | None,
        typer.Option(help="Feature that must keep the query's value (repeatable)."),
    ] = None,
    increase_only: Annotated[
        list[str] | None, typer.Option(help="Numeric feature that may only increase (repeatable).")
    ] = None,
    decrease_only: Annotated[
        list[str] | None, typer.Option(help="Numeric feature that may only decrease (repeatable).")
    ] = None,
    range_: Annotated[
        list[str] | None,
        typer.Option("--range", help="Allowed range in raw units, feature=lo:hi (repeatable)."),
    ] = None,
    allow: Annotated[
        list[str] | None, typer.Option(help="Allowed categories, feature=a,b,c (repeatable).")
    ] = None,
    range_margin: Annotated[
        float | None,
        typer.Option(
            help="A numeric value more than this share of the training range beyond it makes its "
            "row invalid \\[default: 0.05]."
        ),
    ] = None,
    summary_json: Annotated[
        Path | None,
        typer.Option(
            help="Also write the run's summary as JSON here (atomically; also when the run fails "
            "or is stopped)."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Folder input: keep the parts an interrupted run completed, explain the rest."
        ),
    ] = False,
    revert: Annotated[
        bool,
        typer.Option(
            "--revert/--no-revert",
            help="Put back the changes f does not need (--no-revert: the latent walk's answer).",
        ),
    ] = True,
) -> None:
    """Explain every row of INPUT (a Parquet file, or a folder of Parquet parts): a counterfactual
    for each row the classifier rejects.

    Exit codes: 0 done; 1 an error (one line on stderr, no output left); 2 bad usage; 143, 130,
    129 stopped by SIGTERM, SIGINT, SIGHUP (see docs/nightly.md)."""
    from gmcf.runtime import publish, stops
    from gmcf.runtime.folders import FolderSummary
    from gmcf.runtime.run_summary import RunRecord, write_summary_json

    bundle = bundle or default_bundle()
    folder = input.is_dir()
    output = output or input.with_name(
        input.stem + (".explained" if folder else ".explained.parquet")
    )
    if resume and not folder:
        fail("--resume needs a folder of Parquet parts as input")
    record = RunRecord(input, output, bundle)
    if summary_json is not None:
        # a summary that cannot be written, or would land on the input or output, is not written
        try:
            publish.check_output(summary_json, True, input, output, label="summary")
        except GmcfError as exc:
            fail(str(exc))
    with stops.stop_on_signals():
        try:
            summary = _explain_file(
                input,
                output,
                bundle,
                record,
                force=force,
                threshold=threshold,
                tol=tol,
                steps=steps,
                refine=refine,
                extrapolate=extrapolate,
                batch_size=batch_size,
                threads=threads,
                workers=workers,
                id_column=id_column,
                num_cfs=num_cfs,
                constraints=constraints,
                immutable=immutable,
                increase_only=increase_only,
                decrease_only=decrease_only,
                range_=range_,
                allow=allow,
                range_margin=range_margin,
                resume=resume,
                revert=revert,
                fallback=fallback,
                screen=screen,
            )
            status, code, message = "ok", 0, None
        except GmcfError as exc:
            status, code, message, summary = "error", 1, str(exc), None
        except stops.Stopped as stop:
            stops.exit_within(stop.exit_code)  # even if a pool thread was cut at a bad moment
            status, code, message, summary = (
                "stopped",
                stop.exit_code,
                f"{stop}; no output written",
                None,
            )
        stops.disarm()  # from here on the run only reports how it ended
        if summary_json is not None:
            counts = (
                summary.to_dict() | {"searched": summary.searched} if summary is not None else None
            )
            try:
                write_summary_json(
                    summary_json, record.to_dict(status, code, message, counts, summary is not None)
                )
            except GmcfError as exc:
                if message is None:
                    status, code, message = "error", 1, f"{exc} (the output itself was written)"
        if message is not None:
            fail(message, code)
    assert summary is not None
    s = summary
    out.print(
        f"{s.rows:,} rows in {s.seconds:.2f} s ({s.rows / max(s.seconds, 1e-9):,.0f} rows/s): "
        f"{s.found:,} found, {s.already_target:,} already target, {s.not_found:,} not found, "
        f"{s.invalid:,} invalid; validity {100 * s.validity:.1f}% of {s.searched:,} searched",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if isinstance(s, FolderSummary):
        out.print(
            f"{s.parts:,} parts: {s.parts - s.skipped:,} explained, {s.skipped:,} kept from an "
            f"earlier run ({s.skipped_rows:,} rows)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    out.print(f"wrote {output}", highlight=False, markup=False, soft_wrap=True)


def _explain_file(
    input: Path,
    output: Path,
    bundle: Path,
    record: RunRecord,
    *,
    force: bool,
    threshold: float | None,
    tol: float | None,
    steps: int | None,
    refine: bool | None,
    extrapolate: bool | None,
    batch_size: int | None,
    threads: int,
    workers: int,
    id_column: str | None,
    num_cfs: int,
    constraints: Path | None,
    immutable: list[str] | None,
    increase_only: list[str] | None,
    decrease_only: list[str] | None,
    range_: list[str] | None,
    allow: list[str] | None,
    range_margin: float | None,
    resume: bool = False,
    revert: bool = True,
    fallback: bool | None = None,
    screen: bool | None = None,
) -> Summary:
    """The explain run itself; raises GmcfError (one line) or Stopped."""
    from gmcf.runtime import publish
    from gmcf.runtime.constraints import Constraints
    from gmcf.runtime.explainer import Explainer
    from gmcf.runtime.parallel import auto_workers, explain_parquet_parallel
    from gmcf.runtime.read import count_batches
    from gmcf.runtime.settings import batch_size_for

    folder = input.is_dir()
    if not folder:
        publish.check_output(output, force, input)
    if workers < 0:
        raise GmcfError(f"workers must be 0 (one per core) or more, got {workers}")
    for tmp in [] if folder else publish.remove_stale_temps(output):
        err.print(
            f"note: removed {tmp}, left by a run that no longer runs",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    wanted = Constraints.from_file(constraints) if constraints else Constraints()
    wanted = wanted.merge(
        Constraints.from_options(
            immutable or (), increase_only or (), decrease_only or (), range_ or (), allow or ()
        )
    )
    ex = Explainer.from_bundle(
        bundle,
        threads=threads,
        constraints=wanted,
        num_cfs=num_cfs,
        threshold=threshold,
        tol=tol,
        steps=steps,
        refine=refine,
        extrapolate=extrapolate,
        range_margin=range_margin,
        revert=revert,
        fallback=fallback,
        screen=screen,
    )
    record.manifest = ex.bundle.manifest
    batch = batch_size_for(batch_size, ex.bundle.preprocessor.width)
    if folder:
        from gmcf.runtime.folders import cores

        workers = workers or cores()
    else:
        if workers == 0:
            workers = auto_workers(input, batch)
        workers = min(workers, max(1, count_batches(input, batch)))
    record.settings = {
        **ex.settings.to_dict(),
        "range_margin": ex.range_margin,
        "num_cfs": num_cfs,
        "constraints": ex.constraints.to_dict(),
        "batch_size": batch,
        "workers": workers,
        "threads": threads,
        "id_column": id_column,
    }
    with _progress() as bar:
        task = bar.add_task("explaining", total=None, info="")

        def progress(done: int, total: int) -> None:
            elapsed = bar.tasks[task].elapsed or 1e-9
            bar.update(task, completed=done, total=total, info=f"{done / elapsed:,.0f} rows/s")

        if folder:
            from gmcf.runtime.folders import explain_folder

            return explain_folder(
                ex,
                input,
                output,
                workers=workers,
                batch_size=batch_size,
                id_column=id_column,
                resume=resume,
                force=force,
                progress=progress,
            )
        if workers > 1:
            return explain_parquet_parallel(
                ex, input, output, workers, batch_size, id_column, progress, force
            )
        return ex.explain_parquet(
            input,
            output,
            batch_size=batch_size,
            id_column=id_column,
            progress=progress,
            force=force,
        )


@app.command()
def inspect(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the manifest, report and warnings as JSON.")
    ] = False,
    strict: Annotated[
        bool, typer.Option(help="Exit with status 3 when the training report has warnings.")
    ] = False,
) -> None:
    """Print a bundle's manifest and training report (after verifying its checksums)."""
    from gmcf.runtime.bundle import load_bundle

    try:
        b = load_bundle(bundle)
    except GmcfError as exc:
        fail(str(exc))
    warnings = list(b.report.get("warnings", []))
    if as_json:
        out.print_json(
            json.dumps({"manifest": b.manifest.to_dict(), "report": b.report, "warnings": warnings})
        )
        _strict_exit(strict, warnings)
        return
    m, r = b.manifest, b.report
    pre = b.preprocessor
    out.print(f"[bold]{b.path}[/]  format {m.format_version}, dataset {m.dataset}, checksums ok")
    out.print(f"command: {m.command}", highlight=False)
    out.print(f"label {m.label!r}, positive class {m.positive_class!r}", highlight=False)
    for f in pre.features:
        detail = (
            f"[{f.lo:g}, {f.hi:g}]" if not f.is_categorical else f"{len(f.categories)} categories"
        )
        out.print(f"  {f.name:<20} {f.kind:<12} {detail}", highlight=False)
    out.print(
        f"latent z {m.latent.dim} dims, z_u {m.latent.u_dim} dims; mu_1 = {b.mu_1}", highlight=False
    )
    out.print(f"search defaults: {b.search.to_dict()}", highlight=False)
    if r:
        out.print(_report_lines(r), highlight=False)
    _print_warnings(warnings)
    _strict_exit(strict, warnings)


#: Exit status of ``train --strict`` and ``inspect --strict`` when the report has warnings.
WARNING_EXIT = 3


def _print_warnings(warnings: list[str]) -> None:
    for w in warnings:
        err.print(f"[bold yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)


def _strict_exit(strict: bool, warnings: list[str]) -> None:
    if strict and warnings:
        err.print(f"--strict: {len(warnings)} warning(s)", highlight=False)
        raise typer.Exit(WARNING_EXIT)


def _report_lines(r: dict[str, Any]) -> str:
    from gmcf.trainer.quality import quality_lines

    probe = r["z_u_probe"]
    return "\n".join(
        [
            f"classifier: accuracy {r['classifier']['accuracy']:.3f}, balanced accuracy "
            f"{r['classifier']['balanced_accuracy']:.3f} (held out)",
            f"GM posterior agrees with f on {100 * r['gm_posterior_agreement']:.1f}% of held-out "
            "rows",
            f"z_u probe balanced accuracy {probe['balanced_accuracy']:.3f} (0.5 = no leakage; "
            f"majority rate {probe['majority_rate']:.3f})",
            f"reconstruction MSE {r['reconstruction_mse']:.5f}; training {r['seconds']:.0f} s on "
            f"{r['rows']['train']:,} rows",
            *_parity_line(r["classifier"].get("user_model", {}).get("parity")),
            *_screen_line(r.get("screen")),
            *quality_lines(r),
        ]
    )


def _screen_line(screen: dict[str, Any] | None) -> list[str]:
    if not screen:
        return []
    return [
        f"screen: g agrees with f on {100 * screen['agreement']:.1f}% of held-out search "
        f"candidates ({screen['rows']:,} rows, {screen['seconds']:.0f} s)"
    ]


def _parity_line(parity: dict[str, Any] | None) -> list[str]:
    if not parity:
        return []
    return [
        f"bundle vs your model on {parity['rows']:,} held-out raw rows: "
        f"{100 * parity['equal_decisions']:.2f}% equal decisions, max |dp| "
        f"{parity['max_abs_dp']:.2g}"
    ]


@app.command()
def train(
    dataset: Annotated[
        str | None,
        typer.Argument(
            help="Shipped dataset: adult, lending-club, lending-club-book or mnist-1-to-7."
        ),
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Your own CSV or Parquet file (with --schema).")
    ] = None,
    schema: Annotated[
        Path | None, typer.Option(help="JSON or TOML feature schema for --data.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", help="Bundle folder \\[default: ./DATASET, in the current folder]."
        ),
    ] = None,
    classifier: Annotated[
        Path | None,
        typer.Option(help="ONNX classifier to explain \\[default: train the paper's MLP]."),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs of Algorithm 1 [paper: 100; MNIST 20].")
    ] = None,
    lambda_adv: Annotated[
        float | None, typer.Option(help="Weight of the adversarial loss [paper: 0.05].")
    ] = None,
    lambda_lkd: Annotated[
        float | None, typer.Option(help="Weight of the likelihood loss [paper: 0.5; MNIST 0.1].")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 1,
    anchors: Annotated[
        int | None,
        typer.Option(
            help="Approved training rows the bundle carries for the last-resort search "
            "(0: none, the bundle holds no training row) \\[default: 4,096]."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists.")] = False,
    strict: Annotated[
        bool,
        typer.Option(
            help="Exit with status 3 when the quality gate warns (the bundle is still written)."
        ),
    ] = False,
) -> None:
    """Train the classifier (unless given) and the explainer; export an ONNX bundle."""
    try:
        from gmcf.trainer.fit import TrainConfig
        from gmcf.trainer.images import dataset_config
        from gmcf.trainer.pipeline import Callbacks, train_bundle
        from gmcf.trainer.user_model import ClassifierSpec
    except ImportError as exc:
        if exc.name in ("torch", "onnx"):
            fail(f"training needs {exc.name}: pip install 'gmcf-batch[trainer]'")
        raise
    from gmcf.datasets import load_dataset, load_table
    from gmcf.runtime.schema import DataSchema

    try:
        if (dataset is None) == (data is None):
            fail("give either a dataset name (adult, lending-club) or --data FILE --schema FILE")
        if data is not None:
            if schema is None:
                fail("--data needs --schema (a JSON or TOML feature schema)")
            if not schema.exists():
                fail(f"schema file {schema} does not exist")
            ds = load_table(data, DataSchema.from_file(schema))
        else:
            assert dataset is not None
            ds = load_dataset(dataset)
        cfg = dataset_config(ds.schema, TrainConfig(seed=seed, threads=threads))
        cfg = replace(
            cfg,
            epochs=cfg.epochs if epochs is None else epochs,
            lambda_adv=cfg.lambda_adv if lambda_adv is None else lambda_adv,
            lambda_lkd=cfg.lambda_lkd if lambda_lkd is None else lambda_lkd,
            anchors=cfg.anchors if anchors is None else anchors,
        )
        if cfg.anchors < 0:
            fail(f"--anchors must be 0 or more, got {cfg.anchors}")
        dest = output or Path(ds.name)
        command = (
            shlex.join(["gmcf-batch", *sys.argv[1:]])
            if sys.argv[0].endswith("gmcf-batch")
            else None
        )
        with _progress() as bar:
            tasks: dict[str, Any] = {}
            current = {"name": ""}

            def stage(name: str, total: int) -> None:
                current["name"] = name
                tasks[name] = bar.add_task(name, total=total, info="")

            def advance(text: str) -> None:
                bar.update(tasks[current["name"]], advance=1, info=text)

            result = train_bundle(
                ds,
                dest,
                cfg,
                classifier=classifier,
                force=force,
                command=command,
                callbacks=Callbacks(stage, advance),
                classifier_spec=ClassifierSpec.from_schema_file(schema),
            )
    except GmcfError as exc:
        fail(str(exc))
    out.print(f"wrote bundle {result.path}", highlight=False, markup=False, soft_wrap=True)
    out.print(_report_lines(result.report), highlight=False, markup=False, soft_wrap=True)
    warnings = list(result.report.get("warnings", []))
    _print_warnings(warnings)
    _strict_exit(strict, warnings)


@app.command()
def evaluate(
    dataset: Annotated[
        str,
        typer.Argument(
            help="Shipped dataset: adult, lending-club, lending-club-book or mnist-1-to-7."
        ),
    ],
    reps: Annotated[
        int, typer.Option(help="Repetitions, each a fresh random 80/20 split [paper: 5].")
    ] = 5,
    methods: Annotated[
        str,
        typer.Option(help="Comma list of: gmcf, gdl, dice-random, dice-genetic, cfrl, prototype."),
    ] = "gmcf,gdl",
    classifier: Annotated[
        str,
        typer.Option(
            help="f per repetition: mlp (the paper's reference MLP), hgb (scikit-learn "
            "HistGradientBoosting) or lgbm (LightGBM); hgb and lgbm need the gbm extra."
        ),
    ] = "mlp",
    max_queries: Annotated[
        int,
        typer.Option(help="Queries per repetition for every method but GMCF (same rows for each)."),
    ] = 200,
    single_queries: Annotated[
        int, typer.Option(help="Queries per repetition timed one at a time.")
    ] = 200,
    slow_queries: Annotated[
        int, typer.Option(help="Queries per repetition for the slow peer (prototype).")
    ] = 20,
    cfrl_steps: Annotated[
        int, typer.Option(help="Training steps of alibi's CounterfactualRL [alibi: 100,000].")
    ] = 2000,
    seed: Annotated[
        int, typer.Option(help="Seed of the first repetition (repetition r uses seed + r).")
    ] = 0,
    epochs: Annotated[int | None, typer.Option(help="Epochs of Algorithm 1 [paper: 100].")] = None,
    rows: Annotated[
        int | None, typer.Option(help="Use a seeded sample of this many rows (quick runs).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write results as PATH.json and PATH.md.")
    ] = None,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            help="Keep each repetition's bundle and peer files here \\[default: a temporary "
            "folder]."
        ),
    ] = None,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 1,
    peers_python: Annotated[
        Path | None,
        typer.Option(help="Python of the peers environment \\[default: .venv-peers/bin/python]."),
    ] = None,
) -> None:
    """Reproduce the paper's evaluation: train on 80%, explain the held-out rows f rejects, and
    report mean ± SD over repetitions for GMCF, GDL and the peers."""
    import time

    try:
        from gmcf.trainer.evaluate import EvalConfig, check_methods, write_results
        from gmcf.trainer.evaluate import evaluate as run
        from gmcf.trainer.fit import TrainConfig
        from gmcf.trainer.gbm import check_classifier
    except ImportError as exc:
        if exc.name in ("torch", "onnx"):
            fail(f"evaluate needs {exc.name}: pip install 'gmcf-batch[trainer]'")
        raise
    from gmcf.datasets import load_dataset

    t0 = time.time()

    def log(text: str) -> None:
        err.print(
            f"[{time.time() - t0:7.0f} s] {text}", highlight=False, markup=False, soft_wrap=True
        )

    try:
        ds = load_dataset(dataset)
        wanted = tuple(m.strip() for m in methods.split(",") if m.strip())
        check_methods(wanted)
        check_classifier(classifier)
        from gmcf.trainer.images import dataset_config

        # The dataset's own training settings (images: the paper's MNIST settings), as `train` uses.
        train = dataset_config(ds.schema, TrainConfig(threads=threads))
        if epochs is not None:
            train = replace(train, epochs=epochs)
        cfg = EvalConfig(
            reps=reps,
            methods=wanted,
            seed=seed,
            max_queries=max_queries,
            single_queries=single_queries,
            slow_queries=slow_queries,
            cfrl_steps=cfrl_steps,
            rows=rows,
            classifier=classifier,
            train=train,
        )
        if peers_python is not None:
            cfg = replace(cfg, peers_python=peers_python)
        command = (
            shlex.join(["gmcf-batch", *sys.argv[1:]]) if sys.argv[0].endswith("gmcf-batch") else ""
        )

        def save(partial: Any) -> None:
            if output is not None:
                write_results(partial, output)
                log(f"results so far written to {output.with_suffix('.md')}")

        result = run(ds, cfg, work_dir=work_dir, log=log, command=command, on_rep=save)
    except GmcfError as exc:
        fail(str(exc))
    missing = {
        r.error for r in result.runs if not r.ok and r.error and "bench/peers/setup.sh" in r.error
    }
    for text in sorted(missing):
        err.print(f"note: {text}", highlight=False, markup=False, soft_wrap=True)
    out.print(result.to_markdown(), highlight=False, markup=False, soft_wrap=True)
    if output is not None:
        js, md = write_results(result, output)
        out.print(f"wrote {js} and {md}", highlight=False, markup=False, soft_wrap=True)


@app.command()
def sample(
    output: Annotated[Path, typer.Argument(help="Parquet file to write.")] = Path(
        "queries.parquet"
    ),
    dataset: Annotated[
        str, typer.Option(help="adult, lending-club, lending-club-book or mnist-1-to-7.")
    ] = "adult",
    rows: Annotated[int, typer.Option(help="How many rows (taken from the shipped data).")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed of the draw.")] = 0,
) -> None:
    """Write real rows of a shipped dataset as a query file to try `explain` on.

    For mnist-1-to-7 the rows are 1s of MNIST's official test set, which the shipped bundle never
    saw in training (1,135 images; more rows than that are drawn with replacement)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gmcf.datasets import heldout_base_rows, load_dataset

    try:
        ds = load_dataset(dataset)
    except GmcfError as exc:
        fail(str(exc))
    if rows < 1:
        fail(f"rows must be at least 1, got {rows}")
    rng = np.random.default_rng(seed)
    if ds.test_mask is not None:
        pool = heldout_base_rows(ds)
        idx = np.sort(rng.choice(pool, size=rows, replace=rows > pool.size))
    else:
        idx = np.sort(
            rng.choice(ds.table.num_rows, size=min(rows, ds.table.num_rows), replace=False)
        )
    table = ds.table.take(pa.array(idx))
    table = table.drop_columns([ds.schema.label]).append_column("id", pa.array(idx, pa.int64()))
    if ds.schema.has_image:  # images: in the documented query form, float32 in [0, 1]
        from gmcf.runtime.schema import ImagePreprocessor

        pre = ImagePreprocessor.fit_image(table, ds.schema.features)
        name = pre.image.name
        table = table.set_column(
            table.schema.get_field_index(name), name, pre.echo(table.column(name))
        )
    pq.write_table(table, output)
    out.print(
        f"wrote {table.num_rows:,} {dataset} rows to {output}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


@app.command()
def plot(
    bundle: Annotated[
        str, typer.Argument(help="Image bundle: a shipped name (mnist-1-to-7) or a folder.")
    ] = "mnist-1-to-7",
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the PNG files.")] = Path(
        "docs/figures"
    ),
    seed: Annotated[int, typer.Option(help="Random seed of the held-out queries shown.")] = 0,
    threshold: Annotated[
        float | None, typer.Option(help="Decision threshold T \\[default: the bundle's].")
    ] = None,
    tol: Annotated[
        float | None,
        typer.Option(
            help="A counterfactual's score must lie in [T, T + tol) \\[default: the bundle's; with "
            "--threshold alone, 1 - T when the bundle accepts any score up to 1]."
        ),
    ] = None,
) -> None:
    """Draw the paper's MNIST figures for an image bundle: queries and counterfactuals (figure2),
    interpolation paths with f's scores (figure3), PCA of the latent z (figure4). Needs
    matplotlib."""
    from gmcf.trainer.image_report import plot_figures

    path = Path(bundle) if Path(bundle).is_dir() else EXPORTED / bundle
    try:
        written = plot_figures(path, out_dir, seed=seed, threshold=threshold, tol=tol)
    except GmcfError as exc:
        fail(str(exc))
    for p in written:
        out.print(f"wrote {p}", highlight=False, markup=False, soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    app()
