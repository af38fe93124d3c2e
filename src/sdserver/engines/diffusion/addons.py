"""Per-job add-ons on a shared loaded model: LoRA adapters, a swapped VAE, textual-inversion embeddings and token
merging (tomesd). `job_addons` applies them for one job and leaves the model exactly as it found it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import torch
from safetensors import SafetensorError

from sdserver.catalog.layout import AddonKind, find_addon
from sdserver.engines.base import JobFailed
from sdserver.engines.lru import FingerprintLRU, files_fingerprint
from sdserver.errors import JobErrorCode
from sdserver.job_params import GenerationParams

# Loaded adapters stay on the model (disabled between jobs) so a popular LoRA is not re-read every job.
MAX_CACHED_LORAS: Final = 8
MAX_CACHED_VAES: Final = 2
# tomesd's recommended settings: merge half the tokens, only in the full-resolution attention layers.
TOME_RATIO: Final = 0.5
TOME_MAX_DOWNSAMPLE: Final = 1
# A diffusers-layout VAE state dict has these; an original (LDM) checkpoint has `decoder.up.N...` instead.
DIFFUSERS_VAE_KEY: Final = "decoder.conv_in.weight"
DIFFUSERS_VAE_BLOCK: Final = "decoder.up_blocks."
# What a corrupt or mismatched add-on file raises while loading: the job fails, the worker is fine.
LOAD_ERRORS: Final = (ValueError, KeyError, OSError, RuntimeError, SafetensorError)


@dataclass(frozen=True)
class AddonRequest:
    """The add-ons one job asks for (validated by the API; ids are checked again before touching a path)."""

    loras: tuple[tuple[str, float], ...] = ()
    vae: str | None = None
    embeddings: tuple[str, ...] = ()
    tomesd: bool = False

    @classmethod
    def from_params(cls, params: GenerationParams) -> AddonRequest:
        return cls(loras=params.loras, vae=params.vae, embeddings=params.embeddings, tomesd=params.tomesd)


@dataclass
class AddonCache:
    """What stays loaded on one model between jobs: LoRA adapter names and VAEs by id, fingerprinted by their
    files so a replaced file is read again."""

    loras: FingerprintLRU[str, str] = field(default_factory=lambda: FingerprintLRU(MAX_CACHED_LORAS))
    vaes: FingerprintLRU[str, Any] = field(default_factory=lambda: FingerprintLRU(MAX_CACHED_VAES))


@contextmanager
def job_addons(
    pipeline: Any, cache: AddonCache, request: AddonRequest, models_dir: Path, seed: int
) -> Iterator[dict[str, Any]]:
    """Apply the request's add-ons to `pipeline` for the body of the `with`; yields what `meta` reports. On exit
    (also on errors and cancels) every change is undone in reverse order."""
    meta: dict[str, Any] = {"tomesd": "yes" if request.tomesd else "no"}
    with ExitStack() as undo:
        if request.loras:
            # Registered first: a load that fails halfway must not leave a new adapter active for later jobs.
            undo.callback(pipeline.disable_lora)
            _apply_loras(pipeline, cache, request.loras, models_dir)
        if request.vae is not None:
            own = pipeline.vae
            pipeline.vae = _tiled_like(_vae(pipeline, cache, request.vae, models_dir), own)
            undo.callback(setattr, pipeline, "vae", own)
        if request.embeddings:
            tokens = _load_embeddings(pipeline, request.embeddings, models_dir)
            undo.callback(pipeline.unload_textual_inversion, tokens=tokens)
        if request.tomesd:
            problem = _apply_tome(pipeline, seed)
            if problem is None:
                undo.callback(_remove_tome, pipeline)
            else:
                # Reported, never faked: the job runs without token merging.
                meta["tomesd"] = f"unavailable: {problem}"
        yield meta


def _addon_path(models_dir: Path, kind: AddonKind, addon_id: str, field_name: str) -> Path:
    path = find_addon(models_dir, kind, addon_id)
    if path is None:
        raise JobFailed(JobErrorCode.ADDON_NOT_FOUND, f"{field_name}: no {kind.value} with id {addon_id!r} is loaded")
    return path


def adapter_name(lora_id: str) -> str:
    # peft keeps adapters in ModuleDicts, whose keys may not contain dots.
    return "lora_" + re.sub(r"[^A-Za-z0-9_]", "_", lora_id) + f"_{len(lora_id)}"


def _apply_loras(pipeline: Any, cache: AddonCache, loras: tuple[tuple[str, float], ...], models_dir: Path) -> None:
    wanted = {lora_id for lora_id, _ in loras}
    names: list[str] = []
    for lora_id, _ in loras:
        path = _addon_path(models_dir, AddonKind.LORA, lora_id, "lora_model")
        stamp = files_fingerprint(path)
        name = cache.loras.get(lora_id, stamp)
        names.append(name if name is not None else _load_lora(pipeline, cache, lora_id, path, stamp, wanted))
    pipeline.enable_lora()
    pipeline.set_adapters(names, adapter_weights=[strength for _, strength in loras])


def _load_lora(pipeline: Any, cache: AddonCache, lora_id: str, path: Path, stamp: int, wanted: set[str]) -> str:
    """Load one adapter, first deleting its stale copy and the least recently used adapters this job does not
    use: an adapter left out of the cache would stay on the model's modules for good."""
    stale = cache.loras.pop(lora_id)
    if stale is not None:
        pipeline.delete_adapters(stale)
    for _, evicted in cache.loras.make_room(keep=wanted):
        pipeline.delete_adapters(evicted)
    name = adapter_name(lora_id)
    try:
        pipeline.load_lora_weights(str(path), adapter_name=name)
    except LOAD_ERRORS as exc:
        raise JobFailed(JobErrorCode.ADDON_LOAD_FAILED, f"lora_model: {lora_id!r} could not be loaded: {exc}") from exc
    for _, evicted in cache.loras.put(lora_id, stamp, name):
        pipeline.delete_adapters(evicted)
    return name


def _tiled_like(vae: Any, own: Any) -> Any:
    """`vae` set to decode in tiles exactly when the model's own VAE is: the engine sets that for the job's size
    before the add-ons go on (acceleration.tile_vae_for), and a cached swapped VAE keeps the last job's mode."""
    if getattr(own, "use_tiling", False):
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    return vae


def _vae(pipeline: Any, cache: AddonCache, vae_id: str, models_dir: Path) -> Any:
    path = _addon_path(models_dir, AddonKind.VAE, vae_id, "vae")
    stamp = files_fingerprint(path)
    cached = cache.vaes.get(vae_id, stamp)
    if cached is not None:
        return cached
    own = pipeline.vae
    try:
        vae = load_vae(path, own)
    except LOAD_ERRORS as exc:
        raise JobFailed(JobErrorCode.ADDON_LOAD_FAILED, f"vae: {vae_id!r} could not be loaded: {exc}") from exc
    if int(vae.config.latent_channels) != int(own.config.latent_channels) or len(vae.config.block_out_channels) != len(
        own.config.block_out_channels
    ):
        raise JobFailed(
            JobErrorCode.ADDON_INCOMPATIBLE, f"vae: {vae_id!r} does not fit model latents (other architecture)"
        )
    vae = vae.to(device=own.device, dtype=own.dtype).eval()
    cache.vaes.put(vae_id, stamp, vae)
    return vae


def load_vae(path: Path, own: Any) -> Any:
    """An AutoencoderKL from a diffusers folder, or from one weights file in diffusers or original (LDM) layout
    shaped like the model's own VAE (offline: no config is fetched)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if path.is_dir():
        return AutoencoderKL.from_pretrained(path, local_files_only=True)  # type: ignore[no-untyped-call]
    state = _read_weights(path)
    config = dict(own.config)
    if DIFFUSERS_VAE_KEY not in state or not any(key.startswith(DIFFUSERS_VAE_BLOCK) for key in state):
        state = convert_ldm_vae_checkpoint(state, config)  # type: ignore[no-untyped-call]
    vae = AutoencoderKL.from_config(config)  # type: ignore[no-untyped-call]
    vae.load_state_dict(state, strict=True)
    return vae


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # .pt/.ckpt are pickles: weights_only refuses code execution.
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return {str(key): value for key, value in state.items() if isinstance(value, torch.Tensor)}


def _load_embeddings(pipeline: Any, embedding_ids: tuple[str, ...], models_dir: Path) -> list[str]:
    """Load each embedding under its id as the prompt token; returns every token added (multi-vector embeddings
    add `id_1`, `id_2`...) so exactly those are unloaded."""
    tokenizer = pipeline.tokenizer
    before = set(tokenizer.get_vocab())
    try:
        for embedding_id in embedding_ids:
            path = _addon_path(models_dir, AddonKind.EMBEDDING, embedding_id, "embeddings_model")
            try:
                pipeline.load_textual_inversion(str(path), token=embedding_id)
            except LOAD_ERRORS as exc:
                raise JobFailed(
                    JobErrorCode.ADDON_LOAD_FAILED, f"embeddings_model: {embedding_id!r} could not be loaded: {exc}"
                ) from exc
    except BaseException:
        added = sorted(set(tokenizer.get_vocab()) - before)
        if added:
            pipeline.unload_textual_inversion(tokens=added)
        raise
    return sorted(set(tokenizer.get_vocab()) - before)


def _apply_tome(pipeline: Any, seed: int) -> str | None:
    """Patch the UNet for token merging; returns why it could not be applied, or None."""
    try:
        import tomesd  # type: ignore[import-untyped]
    except ImportError as exc:
        return f"tomesd is not installed ({exc})"
    try:
        tomesd.apply_patch(pipeline, ratio=TOME_RATIO, max_downsample=TOME_MAX_DOWNSAMPLE, use_rand=False)
    except (RuntimeError, AttributeError, TypeError) as exc:
        tomesd.remove_patch(pipeline)
        return f"tomesd cannot patch this model ({exc})"
    if not hasattr(pipeline.unet, "_tome_info"):
        return "tomesd found no UNet to patch"
    # tomesd forks the global RNG for its random merge partitions; a seeded generator keeps a seed's bytes stable.
    pipeline.unet._tome_info["args"]["generator"] = torch.Generator(pipeline.unet.device).manual_seed(seed)
    return None


def _remove_tome(pipeline: Any) -> None:
    import tomesd

    tomesd.remove_patch(pipeline)
