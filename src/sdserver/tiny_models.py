"""`models make-tiny`, `make-tiny-upscaler` and `make-tiny-restorer`: seeded demo weights written where the
engines look (and registered), so the API can be tried without real weights; the first tiny model becomes the
default model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from sdserver.catalog.ids import DEFAULT_UPSCALER, UPSCALER_MODELS
from sdserver.config import Settings
from sdserver.database import create_db_engine
from sdserver.engines.diffusion.tiny_families.names import FOLDER_ONLY, TinyFamily
from sdserver.jobstore.control import ControlStore

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine as DbEngine

    from sdserver.catalog.registry import ModelKind

# The upscale endpoint's default model, and a compact network: seconds on a CPU.
DEFAULT_TINY_UPSCALER = DEFAULT_UPSCALER
# The face restorers SDSERVER_FACE_RESTORER accepts, read from the setting (the default first).
RESTORER_CHOICES: tuple[str, ...] = get_args(Settings.model_fields["face_restorer"].annotation)


def add_model_commands(
    model_commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> list[argparse.ArgumentParser]:
    """The `models` subcommands; returns them so the CLI can add its shared flags."""
    tiny = model_commands.add_parser("make-tiny", help="write a tiny random-weight model (its outputs are noise)")
    tiny.add_argument("name", help="model id to create (letters, digits, '.', '_', '-')")
    tiny.add_argument(
        "--family",
        choices=[family.value for family in TinyFamily],
        default=TinyFamily.SD15.value,
        help="model family to imitate (default sd15; sd2v: SD 2.x v-prediction; lcm: SD 1.5 with an LCM scheduler)",
    )
    tiny.add_argument(
        "--single-file",
        action="store_true",
        help="write an original-layout .safetensors checkpoint plus its config folder instead of a diffusers folder",
    )
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    upscaler = model_commands.add_parser(
        "make-tiny-upscaler", help="write seeded Real-ESRGAN weights in the published layout (outputs are not real)"
    )
    upscaler.add_argument(
        "name",
        nargs="?",
        default=DEFAULT_TINY_UPSCALER,
        choices=UPSCALER_MODELS,
        help=f"published upscaler id to imitate (default {DEFAULT_TINY_UPSCALER}, the upscale endpoint's default)",
    )
    upscaler.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    restorer = model_commands.add_parser(
        "make-tiny-restorer",
        help="write seeded face-restorer weights in the official layout (face_enhance runs; its faces are noise)",
    )
    restorer.add_argument(
        "name",
        nargs="?",
        default=RESTORER_CHOICES[0],
        choices=RESTORER_CHOICES,
        help=f"face restorer to imitate (default {RESTORER_CHOICES[0]}, the SDSERVER_FACE_RESTORER default)",
    )
    restorer.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    return [tiny, upscaler, restorer]


def run_models_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.models_command == "make-tiny-upscaler":
        return make_tiny_upscaler(settings, args.name, seed=args.seed)
    if args.models_command == "make-tiny-restorer":
        return make_tiny_restorer(settings, args.name, seed=args.seed)
    return make_tiny(settings, args)


def _open_db(settings: Settings) -> DbEngine:
    """The store's engine, with every table these commands touch created (tables register when imported)."""
    import sdserver.catalog.manifests
    import sdserver.catalog.registry  # noqa: F401

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return create_db_engine(settings.sql_url)


def _publish(settings: Settings, db: DbEngine, kind: ModelKind, model_id: str, path: Path) -> None:
    """Upload a new model to the object store when models live there too, as a load job does."""
    from sdserver.catalog.manifests import ManifestStore
    from sdserver.engines.model_files import ModelFiles
    from sdserver.worker.main import build_object_store

    ModelFiles(settings, build_object_store(settings, db), ManifestStore(db)).publish(kind, model_id, path)


def _size(path: Path) -> int:
    files = [path] if path.is_file() else [entry for entry in path.rglob("*") if entry.is_file()]
    return sum(f.stat().st_size for f in files)


def make_tiny(settings: Settings, args: argparse.Namespace) -> int:
    """`models make-tiny NAME`: a tiny seeded model, registered as ready, for trying the API without weights."""
    from sdserver.catalog.families import detect_source_family
    from sdserver.catalog.ids import is_valid_model_id
    from sdserver.catalog.layout import find_model, models_dir_for
    from sdserver.catalog.registry import ModelKind, ModelRegistry

    if not is_valid_model_id(args.name):
        print(f"error: {args.name!r} is not a valid model id (letters, digits, '.', '_', '-')", file=sys.stderr)
        return 2
    family = TinyFamily(args.family)
    if args.single_file and family in FOLDER_ONLY:
        print(f"error: --single-file: {FOLDER_ONLY[family]}", file=sys.stderr)
        return 2
    # torch loads only for this command, never for `serve` or `keys`.
    from sdserver.engines.diffusion.tiny_families.writer import make_tiny_family_model

    # The registry's format names, as load_model records them.
    model_format = "safetensors" if args.single_file else "diffusers"
    db = _open_db(settings)
    registry = ModelRegistry(db)
    flags = " --single-file" if args.single_file else ""
    source = f"sdserver models make-tiny --family {family.value}{flags} --seed {args.seed}"
    registry.begin_load(ModelKind.CHECKPOINT, args.name, source=source, format=model_format)
    models_dir = models_dir_for(settings)
    path = make_tiny_family_model(models_dir, args.name, family, single_file=args.single_file, seed=args.seed)
    _publish(settings, db, ModelKind.CHECKPOINT, args.name, path)
    registry.mark_ready(ModelKind.CHECKPOINT, args.name, format=model_format, size=_size(path))
    stored = find_model(models_dir, args.name)
    info = detect_source_family(stored) if stored is not None else None
    print(f"wrote tiny {family.value} model '{args.name}' to {path}")
    if info is not None:
        prediction = info.prediction_type.value if info.prediction_type else "unknown"
        few_step = f", few-step: {info.few_step.value}" if info.few_step else ""
        print(f"detected family: {info.family.value} (prediction: {prediction}{few_step})")
    _maybe_make_default(settings, ControlStore(db), args.name)
    print("its weights are random: every image it makes is noise (for trying the API and tests, not for pictures)")
    return 0


def _maybe_make_default(settings: Settings, control: ControlStore, model_id: str) -> None:
    """The first tiny model becomes the default, so requests without `model_id` (legacy v3 clients) work at once."""
    if settings.default_model_id:
        print(f"the default model stays '{settings.default_model_id}' (SDSERVER_DEFAULT_MODEL_ID)")
        return
    current = control.load_default_model()
    if current is not None:
        print(f"the default model stays '{current}'")
        return
    # Persisted in the database the server reads per request: a running server uses it without a restart.
    control.save_default_model(model_id)
    print(f"'{model_id}' is now the default model: requests without model_id use it")


def make_tiny_upscaler(settings: Settings, model_id: str, *, seed: int = 0) -> int:
    """`models make-tiny-upscaler [NAME]`: seeded weights of a published Real-ESRGAN model in its published layout."""
    from sdserver.catalog.registry import ModelKind, ModelRegistry
    from sdserver.engines.upscale.engine import weights_folder
    from sdserver.engines.upscale.tiny import Layout, write_official_weights

    db = _open_db(settings)
    registry = ModelRegistry(db)
    registry.begin_load(ModelKind.UPSCALER, model_id, source=f"sdserver models make-tiny-upscaler --seed {seed}")
    # realesr-general-x4v3 ships its weights under `params`, the RealESRGAN_* files under `params_ema`.
    layout: Layout = "params" if model_id == "realesr-general-x4v3" else "params_ema"
    path = write_official_weights(weights_folder(settings), model_id, layout, seed=seed)
    _publish(settings, db, ModelKind.UPSCALER, model_id, path)
    registry.mark_ready(ModelKind.UPSCALER, model_id, format="pth", size=_size(path))
    print(f"wrote seeded {model_id} weights to {path}")
    print("its weights are random: upscales come out at the right size but are not real upscales (for trying the API)")
    return 0


def make_tiny_restorer(settings: Settings, name: str, *, seed: int = 0) -> int:
    """`models make-tiny-restorer [NAME]`: seeded full-size weights of a face restorer in its official file."""
    from sdserver.catalog.layout import models_dir_for
    from sdserver.engines.restore.restorer import RestorerName, restorer_folder
    from sdserver.engines.restore.tiny import write_restorer_weights

    restorer: RestorerName = name  # type: ignore[assignment]  # argparse allowed only RESTORER_CHOICES
    path = write_restorer_weights(restorer_folder(models_dir_for(settings)), restorer, seed=seed)
    print(f"wrote seeded {name} weights to {path}")
    if name != settings.face_restorer:
        print(f"face_enhance uses {settings.face_restorer}; set SDSERVER_FACE_RESTORER={name} to use these")
    print("its weights are random: face_enhance runs end to end, but restored faces are noise (for trying the API)")
    return 0
