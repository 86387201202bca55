"""The onnxruntime sessions of a bundle, on CPU: the fused search graph, the classifier f and the
reconstruction. Each graph's signature is checked when it is opened, and each search graph is
probed once (one query, two alphas) for the shape of what it returns."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from gmcf.runtime.bundle import Bundle, check_graph_signature
from gmcf.runtime.errors import BundleError
from gmcf.runtime.settings import RunSettings, check_threads

if TYPE_CHECKING:
    from gmcf.runtime.fallback import Anchors


def open_session(path: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


class Engine:
    """onnxruntime sessions of a bundle: the fused search graph, f, and the reconstruction."""

    def __init__(self, bundle: Bundle, threads: int = 1) -> None:
        check_threads(threads)
        self.bundle = bundle
        self.threads = threads
        self.sessions: dict[str, ort.InferenceSession] = {}
        # search_bounded is opened on first use (only constrained searches need it).
        for name in ("search", "classifier", "reconstruct"):
            self._open(name)
        self.pre = bundle.preprocessor
        width = self.pre.width
        shape = self.sessions["classifier"].get_inputs()[0].shape
        if isinstance(shape[1], int) and shape[1] != width:
            raise BundleError(
                f"bundle {bundle.path}: classifier takes {shape[1]} inputs, preprocessing makes "
                f"{width}"
            )
        self.mu_1 = np.asarray(bundle.mu_1, dtype=np.float32)
        self._probe("search")
        self._anchors: Anchors | None = None
        self._anchors_loaded = False

    @property
    def anchors(self) -> Anchors | None:
        """The bundle's anchors for the last-resort search (``gmcf.runtime.fallback``), loaded
        on first use; None when the bundle carries none."""
        if not self._anchors_loaded:
            from gmcf.runtime.fallback import load_anchors

            self._anchors = load_anchors(self)
            self._anchors_loaded = True
        return self._anchors

    def run(self, name: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        """The first output of one of the bundle's graphs (opened on first use)."""
        return np.asarray(self._open(name).run(None, feed)[0], dtype=np.float32)

    def _open(self, name: str) -> ort.InferenceSession:
        if name not in self.sessions:
            sess = open_session(str(self.bundle.graph_path(name)), self.threads)
            check_graph_signature(
                self.bundle,
                name,
                [i.name for i in sess.get_inputs()],
                [o.name for o in sess.get_outputs()],
            )
            self.sessions[name] = sess
            if name in ("search_bounded", "screen", "screen_bounded"):
                self._probe(name)
        return self.sessions[name]

    def _probe(self, name: str) -> None:
        """One query, two alphas: a search graph must return one scored code per candidate."""
        x0 = np.zeros((1, self.pre.width), np.float32)
        feed = {"x": x0, "alphas": np.ones((1, 2), np.float32), "target": self.mu_1_rows(1)}
        if name.endswith("_bounded"):
            feed |= {"lower": x0, "upper": x0 + 1.0}
        code, score = self.sessions[name].run(None, feed)
        code_width = self.pre.code_width
        if code.shape != (2, code_width) or score.shape != (2,):
            raise BundleError(
                f"bundle {self.bundle.path}: {name} graph returns code {list(code.shape)} and "
                f"scores {list(score.shape)} for 1 query x 2 alphas, expected [2, {code_width}] "
                "and [2]"
            )

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.sessions["classifier"].run(None, {"x": x})[0], dtype=np.float32)

    def screens(self, settings: RunSettings) -> bool:
        """Whether a run with ``settings`` searches with the bundle's screen."""
        return settings.screen and self.bundle.has_screen

    def screen_score(self, x: np.ndarray) -> np.ndarray:
        """g(x), the screen's stand-in for f (opened on first use; bundles with a screen only)."""
        return self.run("screen_classifier", {"x": x})

    def candidates(
        self,
        x: np.ndarray,
        alphas: np.ndarray,
        target: np.ndarray | None = None,
        lower: np.ndarray | None = None,
        upper: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Hard-decoded candidates [B, S, F] in model space and their scores [B, S].

        ``target`` [B, d] defaults to mu_1 for every row; ``lower``/``upper`` [B, F] bound the
        returned rows in model space and default to [0, 1] (the training range)."""
        code, score = self.codes(x, alphas, target, lower, upper)
        b, s, c = code.shape
        return self.pre.expand_code(code.reshape(b * s, c)).reshape(b, s, -1), score

    def codes(
        self,
        x: np.ndarray,
        alphas: np.ndarray,
        target: np.ndarray | None = None,
        lower: np.ndarray | None = None,
        upper: np.ndarray | None = None,
        screen: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like ``candidates``, with each candidate in compact code [B, S, C] (see
        ``Preprocessor.expand_code``): what the search keeps until it has chosen. ``screen``:
        scored by the screen g instead of f."""
        b, s = alphas.shape
        feed = {"x": x, "alphas": alphas, "target": self.mu_1_rows(b) if target is None else target}
        graph = "screen" if screen else "search"
        if lower is not None or upper is not None:
            graph += "_bounded"
            feed["lower"] = np.zeros_like(x) if lower is None else lower
            feed["upper"] = np.ones_like(x) if upper is None else upper
        rows, score = self._open(graph).run(None, feed)
        return rows.reshape(b, s, -1), score.reshape(b, s)

    def mu_1_rows(self, n: int) -> np.ndarray:
        return np.array(np.broadcast_to(self.mu_1, (n, self.mu_1.size)))

    def latent(self, x: np.ndarray) -> np.ndarray:
        """z = E(x) (the encoder is opened on first use)."""
        return np.asarray(self._open("encoder").run(None, {"x": x})[0], dtype=np.float32)

    def reconstruction_error(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.sessions["reconstruct"].run(None, {"x": x})[0], dtype=np.float32)
