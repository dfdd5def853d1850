import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def vitalwire_bin() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("VITALWIRE_BIN", ROOT / "target" / "debug" / "vitalwire"))
    if not path.exists():
        pytest.fail(f"{path} not built: run `cargo build -p vitalwire-cli` first")
    return path


@pytest.fixture(scope="session")
def vectors_dir() -> pathlib.Path:
    return ROOT / "spec" / "vectors"
