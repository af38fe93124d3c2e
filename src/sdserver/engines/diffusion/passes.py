"""Generation passes beyond the plain pipeline call (`GenerationPasses`): highres fix, MultiDiffusion panorama and
self-attention guidance on the loaded model's own modules, and Real-ESRGAN upscaling of the outputs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import torch
from PIL import Image

from sdserver.catalog.families import ModelFamily
from sdserver.engines.base import JobFailed, StepContext
from sdserver.engines.diffusion.variants import panorama_pipeline, sag_pipeline
from sdserver.errors import JobErrorCode
from sdserver.job_params import GenerationPasses
from sdserver.jobs import Job, JobKind

if TYPE_CHECKING:
    from sdserver.engines.diffusion.loader import LoadedModel
    from sdserver.engines.upscale.engine import UpscaleEngine

# Families each generation pass runs on (the API refuses the others with a field error; a stored job still fails).
VARIANT_FAMILIES: Final = frozenset({ModelFamily.SD15, ModelFamily.SD2})
HIGHRES_FAMILIES: Final = frozenset({ModelFamily.SD15, ModelFamily.SD2, ModelFamily.SDXL})
# Highres fix: the first pass runs at this share of each side, the second denoises this much of the upscaled latents.
HIGHRES_FIRST_PASS: Final = 0.5
HIGHRES_STRENGTH: Final = 0.55
SAG_SCALE: Final = 0.75

__all__ = [
    "HIGHRES_FAMILIES",
    "VARIANT_FAMILIES",
    "PassRunner",
    "first_pass_size",
    "keep_original",
    "pass_parameters",
]


def first_pass_size(width: int, height: int, multiple: int = 8) -> tuple[int, int]:
    """The size highres fix draws at first: half of each side, down to a multiple of `multiple`."""
    return (
        max(multiple, int(width * HIGHRES_FIRST_PASS) // multiple * multiple),
        max(multiple, int(height * HIGHRES_FIRST_PASS) // multiple * multiple),
    )


def pass_parameters(passes: GenerationPasses) -> dict[str, Any]:
    """What the passes add to the PNG `parameters` text, in A1111's words where it has them."""
    extra: dict[str, Any] = {}
    if passes.highres_fix:
        extra |= {
            "Hires upscale": round(1 / HIGHRES_FIRST_PASS, 2),
            "Hires upscaler": "Latent",
            "Denoising strength": HIGHRES_STRENGTH,
        }
    if passes.panorama:
        extra["Panorama"] = "MultiDiffusion"
    if passes.self_attention:
        extra["SAG scale"] = SAG_SCALE
    if passes.face_enhance:
        extra["Face restoration"] = "yes"
    if passes.upscale_scale > 1:
        extra["Upscale"] = f"{passes.upscale_scale:g}x {passes.upscale_model}"
    return extra


def keep_original(generated: Image.Image, init: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """`generated` with `init`'s pixels inside `box` put back exactly (clipped to the image; JobFailed when the box
    holds nothing: the stored job does not fit its own init image)."""
    left, top, right, bottom = max(0, box[0]), max(0, box[1]), min(init.width, box[2]), min(init.height, box[3])
    if left >= right or top >= bottom:
        raise JobFailed(
            JobErrorCode.INVALID_PARAMS, f"keep_box {box} lies outside the {init.width}x{init.height} image"
        )
    result = generated.convert("RGB")
    result.paste(init.convert("RGB").crop((left, top, right, bottom)), (left, top))
    return result


class _Progress:
    """Steps of several pipeline calls reported as one run of `total` steps."""

    def __init__(self, ctx: StepContext, total: int) -> None:
        self._ctx, self._total, self.offset, self.last = ctx, total, 0, 0

    def step(self, done: int, total: int) -> None:
        self.last = done
        self._ctx.step(min(self.offset + done, self._total), self._total)


class PassRunner:
    """Runs the passes a job asks for. `upscalers` is the upscale engine whose weight folder and cache the `upscale`
    pass uses (None: the pass fails with `model_weights_missing`)."""

    def __init__(self, upscalers: UpscaleEngine | None) -> None:
        self._upscalers = upscalers

    def clear(self) -> None:
        if self._upscalers is not None:
            self._upscalers.clear()

    def generate(
        self,
        model: LoadedModel,
        job: Job,
        passes: GenerationPasses,
        call: dict[str, Any],
        ctx: StepContext,
        make_common: Callable[[StepContext], dict[str, Any]],
    ) -> list[Image.Image] | None:
        """The images of a job whose generation itself changes (None: the plain call runs). `call` is the plain
        call's own arguments (prompts, sizes, images); `make_common(ctx)` the shared ones for a step context."""
        if not (passes.highres_fix or passes.panorama or passes.self_attention):
            return None
        _check(model, job, passes)
        if passes.highres_fix:
            return self._highres(model, job, call, ctx, make_common)
        if passes.panorama:
            pipeline = panorama_pipeline(model)
            pipeline.scheduler = model.pipelines[JobKind.TEXT2IMG].scheduler
            with torch.inference_mode():
                return list(pipeline(**(make_common(ctx) | call)).images)
        return self._self_attention(model, call, ctx, make_common)

    def restore_faces(
        self, images: list[Image.Image], passes: GenerationPasses
    ) -> tuple[list[Image.Image], dict[str, Any]]:
        """The outputs with their faces restored, and what `meta` says of it (unchanged when not asked)."""
        if not passes.face_enhance:
            return images, {}
        if self._upscalers is None:
            raise JobFailed(JobErrorCode.FACE_ENHANCE_UNAVAILABLE, "face_enhance: this worker has no upscale engine")
        results = [self._upscalers.restore_faces(image) for image in images]
        meta = {"face_restorer": self._upscalers.face_restorer_name, "faces_restored": [r.faces for r in results]}
        return [result.image for result in results], meta

    def upscale(self, images: list[Image.Image], passes: GenerationPasses, ctx: StepContext) -> list[Image.Image]:
        """The outputs upscaled by `passes.upscale_scale` (unchanged at 1)."""
        if passes.upscale_scale <= 1:
            return images
        if self._upscalers is None:
            raise JobFailed(JobErrorCode.MODEL_WEIGHTS_MISSING, "upscale: this worker has no upscale engine")
        upscaler = self._upscalers.upscaler(passes.upscale_model)
        return [upscaler.upscale(image, passes.upscale_scale) for image in images]

    def _highres(
        self,
        model: LoadedModel,
        job: Job,
        call: dict[str, Any],
        ctx: StepContext,
        make_common: Callable[[StepContext], dict[str, Any]],
    ) -> list[Image.Image]:
        """Draw at half size as latents, upscale the latents to the job's size, then denoise part of the way again
        with the img2img pipeline on the same modules and the same seeds."""
        width, height = first_pass_size(job.width, job.height)
        common = make_common(ctx)
        steps = int(common["num_inference_steps"])
        # At least one refining step (a 1-step job refines from scratch: diffusers refuses zero steps).
        strength = max(HIGHRES_STRENGTH, 1 / steps)
        progress = _Progress(ctx, steps + int(steps * strength))
        first = model.pipelines[JobKind.TEXT2IMG]
        small = call | {"width": width, "height": height, **_sdxl_size(model, width, height)}
        with torch.inference_mode():
            latents = first(**(make_common(progress) | small | {"output_type": "latent"})).images
            factor = int(first.vae_scale_factor)
            size = (job.height // factor, job.width // factor)
            latents = torch.nn.functional.interpolate(latents, size=size, mode="bilinear")
        progress.offset = progress.last
        second = model.pipelines[JobKind.IMG2IMG]
        second.scheduler = first.scheduler
        refine = {key: value for key, value in call.items() if key not in ("width", "height")}
        refine |= {"image": latents, "strength": strength, "num_images_per_prompt": 1}
        # One image per latent: each sample keeps drawing from its own seed.
        count = int(latents.shape[0])
        for key in ("prompt", "negative_prompt", "prompt_embeds", "negative_prompt_embeds"):
            value = refine.get(key)
            if isinstance(value, str):
                refine[key] = [value] * count
            elif isinstance(value, torch.Tensor) and value.shape[0] != count:
                refine[key] = value.repeat_interleave(count // value.shape[0], dim=0)
        with torch.inference_mode():
            return list(second(**(make_common(progress) | refine | {"num_images_per_prompt": 1})).images)

    def _self_attention(
        self,
        model: LoadedModel,
        call: dict[str, Any],
        ctx: StepContext,
        make_common: Callable[[StepContext], dict[str, Any]],
    ) -> list[Image.Image]:
        pipeline = sag_pipeline(model)
        pipeline.scheduler = model.pipelines[JobKind.TEXT2IMG].scheduler
        common = make_common(ctx)
        total = int(common["num_inference_steps"])
        common.pop("callback_on_step_end")
        common |= {"callback": lambda index, _t, _latents: ctx.step(index + 1, total), "callback_steps": 1}
        with _restored_attention(pipeline.unet), torch.inference_mode():
            try:
                return list(pipeline(**(common | call | {"sag_scale": SAG_SCALE})).images)
            except ValueError as exc:
                if "does not support using a scheduler" not in str(exc):
                    raise
                raise JobFailed(
                    JobErrorCode.UNSUPPORTED_SCHEDULER,
                    f"self_attention: runs with integer-timestep schedulers only, not "
                    f"{type(pipeline.scheduler).__name__}",
                ) from None


def _check(model: LoadedModel, job: Job, passes: GenerationPasses) -> None:
    """Jobs stored before the API refused a combination fail clearly instead of running something else."""
    name = "highres_fix" if passes.highres_fix else "panorama" if passes.panorama else "self_attention"
    families = HIGHRES_FAMILIES if passes.highres_fix else VARIANT_FAMILIES
    if job.kind is not JobKind.TEXT2IMG or model.family not in families or model.info.inpainting:
        raise JobFailed(
            JobErrorCode.INVALID_PARAMS,
            f"{name}: runs on text2img with {', '.join(sorted(family.value for family in families))} models, "
            f"not {job.kind.value} on {model.model_id} ({model.family.value})",
        )


def _sdxl_size(model: LoadedModel, width: int, height: int) -> dict[str, Any]:
    if model.family is not ModelFamily.SDXL:
        return {}
    return {"original_size": (height, width), "target_size": (height, width)}


@contextlib.contextmanager
def _restored_attention(unet: Any) -> Iterator[None]:
    """SAG swaps attention processors and puts them back only when it finishes: a cancel or an error must too."""
    saved = unet.attn_processors
    try:
        yield
    finally:
        unet.set_attn_processor(saved)
