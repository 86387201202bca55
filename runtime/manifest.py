"""``manifest.json``: what a bundle holds, typed. The trainer writes it, the runtime and the CLI
read it; both go through ``Manifest`` (``to_dict`` / ``from_dict``), never through raw keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gmcf.runtime.errors import BundleError
from gmcf.runtime.schema import Preprocessor
from gmcf.runtime.settings import RunSettings

FORMAT = "gmcf-bundle"
FORMAT_VERSION = 2
OPSET = 17
MANIFEST = "manifest.json"

#: name -> (input names, output names) of every graph a bundle carries.
GRAPHS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "encoder": (("x",), ("z",)),
    "encoder_u": (("x",), ("z_u",)),
    "decoder": (("z", "z_u"), ("x_soft",)),
    "classifier": (("x",), ("score",)),
    "search": (("x", "alphas", "target"), ("code", "score")),
    "search_bounded": (("x", "alphas", "target", "lower", "upper"), ("code", "score")),
    "reconstruct": (("x",), ("error",)),
}

#: Graphs a bundle may carry: the screen, a cheap stand-in g of a costly classifier f
#: (``gmcf.runtime.search``), as a search graph, a bounded search graph and a classifier.
OPTIONAL_GRAPHS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "screen": GRAPHS["search"],
    "screen_bounded": GRAPHS["search_bounded"],
    "screen_classifier": GRAPHS["classifier"],
}

#: Sections without which a manifest cannot be used.
REQUIRED = ("files", "graphs", "preprocessing", "latent", "search")


@dataclass(frozen=True)
class Latent:
    """The Gaussian mixture of the latent space z: one mean and variance per class."""

    dim: int
    u_dim: int
    mu: list[list[float]]
    var: list[list[float]]

    @property
    def mu_1(self) -> list[float]:
        """Mean of the target class (the paper's mu_1), the point a query walks toward."""
        return list(self.mu[1])

    @property
    def var_1(self) -> list[float]:
        return list(self.var[1])

    def to_dict(self) -> dict[str, Any]:
        return {"dim": self.dim, "u_dim": self.u_dim, "mu": self.mu, "var": self.var}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Latent:
        return cls(
            int(d["dim"]),
            int(d["u_dim"]),
            [list(map(float, m)) for m in d["mu"]],
            [list(map(float, v)) for v in d["var"]],
        )


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest. ``files`` maps every file to its sha256; ``graphs`` maps each graph
    of ``GRAPHS`` to its file; ``constraints`` are the bundle's default constraints (often none);
    ``extra`` keeps sections this version does not know, so that they survive a round trip."""

    preprocessing: Preprocessor
    latent: Latent
    search: RunSettings
    graphs: dict[str, str]
    files: dict[str, str]
    dataset: str | None = None
    label: str | None = None
    positive_class: str | None = None
    format_version: int = FORMAT_VERSION
    created: str | None = None
    command: str | None = None
    producer: dict[str, str] = field(default_factory=dict)
    opset: int = OPSET
    train_config: dict[str, Any] = field(default_factory=dict)
    classifier: str | None = None
    constraints: dict[str, Any] = field(default_factory=dict)
    anchors: dict[str, Any] = field(default_factory=dict)
    """The last-resort search's anchors (``gmcf.runtime.fallback``): ``file`` and ``count``;
    empty when the bundle carries none."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written as ``manifest.json`` (sections in a fixed order)."""
        out: dict[str, Any] = {
            "format": FORMAT,
            "format_version": self.format_version,
            "created": self.created,
            "command": self.command,
            "producer": self.producer,
            "dataset": self.dataset,
            "schema": {"label": self.label, "positive_class": self.positive_class},
            "preprocessing": self.preprocessing.to_dict(),
            "latent": self.latent.to_dict(),
            "opset": self.opset,
            "search": self.search.to_dict(),
            "train_config": self.train_config,
            "classifier": self.classifier,
            "graphs": self.graphs,
            "files": self.files,
        }
        if self.constraints:
            out["constraints"] = self.constraints
        if self.anchors:
            out["anchors"] = self.anchors
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Manifest:
        """Check and parse a manifest; ``where`` (e.g. ``bundle exported/adult``) starts every
        error message."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise BundleError(f"{where}: {MANIFEST} is not a {FORMAT} manifest")
        version = d.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise BundleError(
                f"{where}: format version {version} is newer than this gmcf-batch reads "
                f"({FORMAT_VERSION}); upgrade gmcf-batch"
            )
        if version < FORMAT_VERSION:
            raise BundleError(
                f"{where}: format version {version} is older than this gmcf-batch reads "
                f"({FORMAT_VERSION}); train the bundle again with `gmcf-batch train`"
            )
        for key in REQUIRED:
            if key not in d:
                raise BundleError(f"{where}: {MANIFEST} lacks {key!r}")
        missing_graphs = sorted(set(GRAPHS) - set(d["graphs"]))
        if missing_graphs:
            raise BundleError(f"{where}: manifest lists no graph for {', '.join(missing_graphs)}")
        for name, fname in d["graphs"].items():
            if fname not in d["files"]:
                raise BundleError(
                    f"{where}: graph {name} ({fname}) has no checksum in the manifest"
                )
        known = {
            "format",
            "format_version",
            "created",
            "command",
            "producer",
            "dataset",
            "schema",
            "preprocessing",
            "latent",
            "opset",
            "search",
            "train_config",
            "classifier",
            "graphs",
            "files",
            "constraints",
            "anchors",
        }
        schema = d.get("schema") or {}
        try:
            return cls(
                preprocessing=Preprocessor.from_dict(d["preprocessing"]),
                latent=Latent.from_dict(d["latent"]),
                search=RunSettings(**d["search"]),
                graphs={str(k): str(v) for k, v in d["graphs"].items()},
                files={str(k): str(v) for k, v in d["files"].items()},
                dataset=d.get("dataset"),
                label=schema.get("label"),
                positive_class=schema.get("positive_class"),
                format_version=version,
                created=d.get("created"),
                command=d.get("command"),
                producer=dict(d.get("producer") or {}),
                opset=int(d.get("opset", OPSET)),
                train_config=dict(d.get("train_config") or {}),
                classifier=d.get("classifier"),
                constraints=dict(d.get("constraints") or {}),
                anchors=dict(d.get("anchors") or {}),
                extra={k: v for k, v in d.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: malformed manifest: {exc}") from exc
