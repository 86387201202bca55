"""The bundle's manifest.json, and load_bundle's checks of it (runtime/bundle.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gmcf.datasets import ADULT_SCHEMA
from gmcf.runtime.bundle import (
    FORMAT,
    FORMAT_VERSION,
    GRAPHS,
    MANIFEST,
    OPSET,
    SearchDefaults,
    load_bundle,
)
from gmcf.runtime.errors import BundleError


@pytest.fixture
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle, free to alter."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "b"))


def manifest_of(path: Path) -> dict[str, Any]:
    return dict(json.loads((path / MANIFEST).read_text()))


def edit_manifest(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    m = manifest_of(path)
    change(m)
    (path / MANIFEST).write_text(json.dumps(m, indent=2))


def test_load_bundle_accepts_a_fresh_bundle(bundle: Path) -> None:
    b = load_bundle(bundle)
    assert b.path == bundle
    assert b.preprocessor.names == [f.name for f in ADULT_SCHEMA.features]
    assert b.search == SearchDefaults()
    assert b.report["rows"]["train"] > 0
    for name in GRAPHS:
        assert b.graph_path(name).is_file()
    assert len(b.mu_1) == b.manifest.latent.dim


def test_manifest_has_every_field(bundle: Path) -> None:
    m = manifest_of(bundle)
    assert m["format"] == FORMAT == "gmcf-bundle"
    assert m["format_version"] == FORMAT_VERSION
    assert m["opset"] == OPSET
    assert m["command"] == "test"  # as given to train_bundle by the fixture
    assert m["dataset"] == "adult-small"
    assert m["created"]
    assert m["schema"] == {"label": "income", "positive_class": ">50K"}
    for pkg in ("python", "gmcf-batch", "torch", "onnx", "onnxruntime", "numpy"):
        assert isinstance(m["producer"].get(pkg), str) and m["producer"][pkg], pkg
    # Preprocessing: every feature in schema order, fitted.
    feats = m["preprocessing"]["features"]
    assert [f["name"] for f in feats] == [f.name for f in ADULT_SCHEMA.features]
    for f in feats:
        if f["kind"] == "categorical":
            assert f["categories"] == sorted(f["categories"]) and len(f["categories"]) >= 2
        else:
            assert f["lo"] <= f["hi"]
    # Latent sizes and the fitted Gaussians.
    lat = m["latent"]
    cfg = m["train_config"]
    assert (lat["dim"], lat["u_dim"]) == (cfg["latent_dim"], cfg["latent_u_dim"])
    assert len(lat["mu"]) == len(lat["var"]) == 2
    assert all(len(row) == lat["dim"] for row in lat["mu"] + lat["var"])
    assert all(v >= cfg["var_floor"] for row in lat["var"] for v in row)
    # Threshold and search defaults.
    assert m["search"] == SearchDefaults().to_dict()
    assert m["search"]["threshold"] == 0.5
    assert m["classifier"] == "reference-mlp"
    assert m["train_config"]["epochs"] == 2


def test_manifest_lists_the_sha256_of_every_file(bundle: Path) -> None:
    m = manifest_of(bundle)
    on_disk = {p.name for p in bundle.iterdir()} - {MANIFEST}
    assert set(m["files"]) == on_disk
    assert {f"{g}.onnx" for g in GRAPHS} | {"report.json", "anchors.npy"} == on_disk
    assert m["anchors"]["file"] == "anchors.npy"
    for fname, digest in m["files"].items():
        assert hashlib.sha256((bundle / fname).read_bytes()).hexdigest() == digest, fname
    assert m["graphs"] == {g: f"{g}.onnx" for g in GRAPHS}


@pytest.mark.parametrize("fname", ["search.onnx", "encoder.onnx", "report.json"])
def test_a_missing_file_is_named(bundle: Path, fname: str) -> None:
    (bundle / fname).unlink()
    with pytest.raises(BundleError, match=rf"file {fname} is missing") as exc:
        load_bundle(bundle)
    assert str(bundle) in str(exc.value)


@pytest.mark.parametrize("fname", ["decoder.onnx", "classifier.onnx", "report.json"])
def test_an_altered_file_is_named(bundle: Path, fname: str) -> None:
    data = bytearray((bundle / fname).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    (bundle / fname).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"file {fname} does not match its sha256") as exc:
        load_bundle(bundle)
    assert str(bundle) in str(exc.value)
    load_bundle(bundle, verify=False)  # the checksum is the only thing that fails


def test_a_newer_format_version_is_refused(bundle: Path) -> None:
    edit_manifest(bundle, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(
        BundleError, match=r"format version \d+ is newer.*upgrade gmcf-batch"
    ) as exc:
        load_bundle(bundle)
    assert str(bundle) in str(exc.value)


def test_an_older_format_version_is_refused(bundle: Path) -> None:
    """Version 1 search graphs returned whole candidate rows; this runtime reads compact codes."""
    edit_manifest(bundle, lambda m: m.update(format_version=FORMAT_VERSION - 1))
    with pytest.raises(BundleError, match=r"format version \d+ is older.*gmcf-batch train") as exc:
        load_bundle(bundle)
    assert str(bundle) in str(exc.value)


def test_a_format_version_that_is_not_a_number_is_refused(bundle: Path) -> None:
    edit_manifest(bundle, lambda m: m.update(format_version="1"))
    with pytest.raises(BundleError, match="format version"):
        load_bundle(bundle)


@pytest.mark.parametrize("text", ["{not json", "", '{"format": "gmcf-bundle",'])
def test_a_manifest_that_is_not_json_is_named(bundle: Path, text: str) -> None:
    (bundle / MANIFEST).write_text(text)
    with pytest.raises(BundleError, match=r"manifest\.json is not valid JSON") as exc:
        load_bundle(bundle)
    assert str(bundle) in str(exc.value)


def test_a_manifest_of_another_format_is_refused(bundle: Path) -> None:
    edit_manifest(bundle, lambda m: m.update(format="something-else"))
    with pytest.raises(BundleError, match=r"manifest\.json is not a gmcf-bundle manifest"):
        load_bundle(bundle)
    (bundle / MANIFEST).write_text("[1, 2]")
    with pytest.raises(BundleError, match=r"manifest\.json is not a gmcf-bundle manifest"):
        load_bundle(bundle)


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_a_manifest_without_a_graph_is_named(bundle: Path, graph: str) -> None:
    edit_manifest(bundle, lambda m: m["graphs"].pop(graph))
    with pytest.raises(BundleError, match=rf"manifest lists no graph for {graph}$"):
        load_bundle(bundle)


def test_a_graph_without_a_checksum_is_named(bundle: Path) -> None:
    edit_manifest(bundle, lambda m: m["files"].pop("search.onnx"))
    with pytest.raises(BundleError, match=r"graph search \(search\.onnx\) has no checksum"):
        load_bundle(bundle)


@pytest.mark.parametrize("key", ["files", "graphs", "preprocessing", "latent", "search"])
def test_a_manifest_lacking_a_section_is_named(bundle: Path, key: str) -> None:
    edit_manifest(bundle, lambda m: m.pop(key))
    with pytest.raises(BundleError, match=rf"lacks '{key}'"):
        load_bundle(bundle)


def test_a_missing_manifest_or_folder_is_named(bundle: Path, tmp_path: Path) -> None:
    (bundle / MANIFEST).unlink()
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        load_bundle(bundle)
    with pytest.raises(BundleError, match="not a folder"):
        load_bundle(tmp_path / "nowhere")


def test_a_malformed_search_section_is_reported(bundle: Path) -> None:
    edit_manifest(bundle, lambda m: m["search"].update(no_such_setting=1))
    with pytest.raises(BundleError, match="malformed manifest"):
        load_bundle(bundle)


def test_every_error_message_is_one_line(bundle: Path) -> None:
    (bundle / MANIFEST).write_text("{\n\n  oops")
    with pytest.raises(BundleError) as exc:
        load_bundle(bundle)
    assert "\n" not in str(exc.value)
