"""What `make build` (sam build) produced: the layer holds the library and its pinned dependencies for
Lambda arm64/python3.13, and nothing from tests, tools or the emulator; each function is its handler."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from tests.template.stack import ROOT

pytestmark = pytest.mark.template

BUILD = ROOT / ".aws-sam" / "build"
LIBRARY = ROOT / "layers" / "ownpage_sync" / "ownpage_sync"
# `make test` builds first and sets this: there, a missing build is a failure, not a skip.
REQUIRE_BUILD = os.environ.get("OWNPAGE_SYNC_REQUIRE_BUILD") == "1"
FORBIDDEN = ("ownpage_sync_tools", "tests", "emulator", "moto", "pytest", "hypothesis", "_pytest", "cfnlint")
ELF_MACHINE_AARCH64 = 183


def _missing_or_stale(why: str) -> None:
    """Under `make test` (which builds first) a missing or stale build fails; run alone, it skips."""
    if REQUIRE_BUILD:
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def built() -> Path:
    if not (BUILD / "template.yaml").exists():
        _missing_or_stale("no sam build output in .aws-sam/build - run `make build` (make test does)")
    return BUILD


@pytest.fixture(scope="module")
def layer(built: Path) -> Path:
    (path,) = [p for p in built.iterdir() if p.name.startswith("OwnpageSyncLayer")]
    return path / "python"


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
        if match:
            pins[re.sub(r"[-_.]+", "_", match.group(1)).lower()] = match.group(2)
    return pins


def test_layer_holds_every_pinned_runtime_dependency_at_its_pinned_version(layer: Path) -> None:
    installed = {}
    for dist in layer.glob("*.dist-info"):
        name, _, version = dist.name.removesuffix(".dist-info").rpartition("-")
        installed[re.sub(r"[-_.]+", "_", name).lower()] = version
    for name, version in _pins().items():
        assert installed.get(name) == version, f"{name}=={version} missing from the layer (found {installed.get(name)})"


def test_layer_holds_exactly_the_library_sources(layer: Path) -> None:
    shipped = {p.relative_to(layer / "ownpage_sync"): p.read_bytes() for p in (layer / "ownpage_sync").rglob("*.py")}
    source = {p.relative_to(LIBRARY): p.read_bytes() for p in LIBRARY.rglob("*.py") if "__pycache__" not in p.parts}
    if set(shipped) != set(source):
        _missing_or_stale(
            f"layer and sources differ: {sorted(map(str, set(shipped) ^ set(source)))} - run `make build`"
        )
    stale = [str(path) for path in source if shipped[path] != source[path]]
    if stale:
        _missing_or_stale(f"the layer is older than the sources {stale} - run `make build`")


def test_layer_ships_nothing_from_tests_tools_or_the_emulator(layer: Path) -> None:
    top_level = {p.name for p in layer.iterdir()}
    assert not top_level & set(FORBIDDEN)
    for path in layer.rglob("*"):
        assert "emulator" not in path.name.lower(), path
        assert path.suffix != ".pyc" and path.name != "__pycache__", path
    assert not (layer / "bin").exists()


def test_layer_native_code_is_for_lambda_arm64_python313(layer: Path) -> None:
    extensions = list(layer.rglob("*.so"))
    assert extensions, "expected at least one compiled extension (e.g. wrapt) to check"
    for extension in extensions:
        header = extension.read_bytes()[:20]
        assert header[:4] == b"\x7fELF", extension
        assert int.from_bytes(header[18:20], "little") == ELF_MACHINE_AARCH64, extension
        if extension.parent.name.endswith(".libs"):
            continue  # a C library a wheel vendors (numpy.libs: OpenBLAS): no Python ABI, only the CPU counts
        assert "cpython-313" in extension.name or "abi3" in extension.name, extension


def test_layer_fits_lambda_with_room_to_spare(layer: Path) -> None:
    size = sum(p.stat().st_size for p in layer.rglob("*") if p.is_file())
    # Lambda allows 250 MB unzipped for a function and its layers together.
    assert size < 150 * 1024 * 1024, f"layer is {size / 1e6:.0f} MB"


def test_each_function_artifact_is_its_handler_alone(built: Path) -> None:
    for function, folder in (("SyncFunction", "sync"), ("RetryFunction", "retry"), ("ChangeFunction", "change")):
        artifact = built / function
        assert sorted(p.name for p in artifact.iterdir()) == ["app.py"]
        if (artifact / "app.py").read_bytes() != (ROOT / "functions" / folder / "app.py").read_bytes():
            _missing_or_stale(f"{function}'s artifact is older than functions/{folder}/app.py - run `make build`")


def test_built_template_targets_arm64_python313(built: Path) -> None:
    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    template = yaml.load((built / "template.yaml").read_text(), Loader=_Loader)
    functions = [r for r in template["Resources"].values() if r["Type"] == "AWS::Serverless::Function"]
    assert len(functions) == 3
    assert template["Globals"]["Function"]["Runtime"] == "python3.13"
    assert template["Globals"]["Function"]["Architectures"] == ["arm64"]
