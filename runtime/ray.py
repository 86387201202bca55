"""Ray Data: ``explain_ray(ds, bundle)`` explains a Ray Dataset with ``map_batches``.

A pool of actors (a callable class) each opens the bundle once and explains whole batches in
Arrow. The bundle is checked on the driver first (checksums, settings, the input's columns), so a
bad bundle or input fails before any actor starts.

**Resources.** Ray Data's read and write tasks need a whole CPU each; if the actors reserve every
CPU of the cluster (``concurrency=2`` with the default one CPU per actor on a 2-CPU machine), no
read task can ever be scheduled and the job hangs without an error. By default the pool has one
actor per CPU and the actors together reserve all CPUs but one (on 2 CPUs: two actors of 0.5
CPU; on one CPU: one actor reserving none). The reservation is Ray's bookkeeping only: each
actor runs onnxruntime on ``threads`` threads (default 1). On a cluster of several nodes, give
``concurrency`` and ``num_cpus=1`` so that a whole CPU stays free on every node.

**Order.** ``preserve_order=True`` (the default) sets Ray Data's ``preserve_order`` option on the
returned dataset's own context, so its blocks come out in input order and rows keep their order
within each block: the output has the input's order, as the CLI's has. Without it (faster on a
busy cluster: blocks are emitted as they finish), restore the order from the id column:
``out.sort(id_column)`` for sortable ids, or join on the id.

ray is needed only here: install the ``ray`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from gmcf.runtime.errors import InputError
from gmcf.runtime.explainer import Explainer
from gmcf.runtime.interop import Plan, batch_rows, cached_explainer, to_plain


class RayExplainer:
    """The callable class of ``map_batches``: one explainer per actor."""

    def __init__(self, plan: Plan, id_column: str | None) -> None:
        self.ex = cached_explainer(plan)
        self.id_column = id_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        return to_plain(self.ex.explain(batch, id_column=self.id_column))


def actor_resources(cpus: float, concurrency: int | None = None) -> tuple[int, float]:
    """(actors, CPUs reserved per actor) for a cluster of ``cpus`` CPUs: one actor per CPU by
    default, reserving together all CPUs but one, so that reads and writes can always run."""
    actors = concurrency or max(1, int(cpus))
    return actors, min(1.0, max(0.0, cpus - 1.0) / actors)


def explain_ray(
    ds: Any,
    bundle: str | Path,
    id_column: str | None = None,
    *,
    batch_size: int | None = None,
    concurrency: int | None = None,
    num_cpus: float | None = None,
    memory: float | None = None,
    preserve_order: bool = True,
    **settings: Any,
) -> Any:
    """Explain every row of the Ray Dataset ``ds``; returns a Ray Dataset (lazy) with the columns
    of ``gmcf.runtime.output_schema`` in plain Arrow types (strings, lists).

    ``settings`` are those of ``Explainer.from_bundle`` (threads, constraints, num_cfs,
    threshold, tol, ...). ``batch_size``: rows per call of an actor (default: the explainer's).
    ``concurrency`` and ``num_cpus``: actors in the pool and CPUs each reserves (default: see the
    module's note on resources); ``memory``: bytes each actor reserves (Ray's ``memory``). The
    bundle path must be readable on every node."""
    import ray

    ex = Explainer.from_bundle(bundle, **settings)
    schema = ds.schema()
    names = list(schema.names) if schema is not None else []
    if schema is not None:
        arrow = schema.base_schema if hasattr(schema, "base_schema") else None
        if isinstance(arrow, pa.Schema):
            ex.bundle.preprocessor.check_columns(arrow)
        else:
            missing = [n for n in ex.bundle.preprocessor.names if n not in names]
            if missing:
                raise InputError(f"the input lacks feature column(s): {', '.join(missing)}")
    if id_column is not None and id_column not in names:
        raise InputError(f"id column {id_column!r} is not in the input")
    if not ray.is_initialized():
        ray.init()
    cpus = float(ray.cluster_resources().get("CPU", 1.0))  # type: ignore[no-untyped-call, unused-ignore]
    actors, per_actor = actor_resources(cpus, concurrency)
    if num_cpus is not None:
        per_actor = num_cpus
    columns = list(
        dict.fromkeys([*([id_column] if id_column else []), *ex.bundle.preprocessor.names])
    )
    out = ds.select_columns(columns).map_batches(
        RayExplainer,
        fn_constructor_kwargs={"plan": Plan.of(ex), "id_column": id_column},
        batch_format="pyarrow",
        batch_size=batch_rows(ex, batch_size),
        concurrency=actors,
        num_cpus=per_actor,
        memory=memory,
        zero_copy_batch=True,
    )
    if preserve_order:
        out.context.execution_options.preserve_order = True
    return out
