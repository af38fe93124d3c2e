"""The one settings object: read from `SDSERVER_*` environment variables and CLI flags once, then passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIB = 1024 * 1024


def _split_list(value: object) -> object:
    """Accept `a,b` in an environment variable as well as a JSON list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the server. Build it once (the CLI does) and hand it to whatever needs it."""

    model_config = SettingsConfigDict(env_prefix="SDSERVER_", extra="ignore", frozen=True)

    # Where the embedded default keeps everything: the SQLite file and the local object folder.
    data_dir: Path = Path("./data")
    host: str = "127.0.0.1"
    port: int = 8000
    # External base URL used to build every link we hand out (fetch_result, image URLs).
    # Defaults to http://{host}:{port}; set it when the server sits behind a proxy or a domain.
    base_url: str | None = None

    # Where each running `serve` leaves a record (pid, URL, data dir) so CLI commands on another data dir can warn;
    # default `$XDG_STATE_HOME/sdserver/servers`.
    servers_dir: Path | None = None

    # SQLAlchemy URL; defaults to a SQLite file under data_dir. PostgreSQL: postgresql+psycopg://...
    database_url: str | None = None
    # An admin key to install on start (created if missing). Never logged.
    admin_key: SecretStr | None = None

    # Object storage: "local" keeps objects under data_dir/objects and serves them at /files/...
    storage: Literal["local", "s3"] = "local"
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    # Public base URL of the bucket (CDN, r2.dev, ...). Without it, links are presigned GET URLs.
    s3_public_base_url: str | None = None
    # Prefix inside the bucket under which every object key is written.
    s3_prefix: str = ""
    # Lifetime of presigned links for permanent objects when no public base URL is set (max 7 days in SigV4).
    s3_presign_expiry_s: int = Field(default=7 * 24 * 3600, ge=60, le=7 * 24 * 3600)

    # Lifetime of objects written with `temp: yes`.
    temp_ttl_s: int = Field(default=24 * 3600, ge=60)
    # Secret for signing local temp links; generated and kept in the database when not given.
    signing_secret: SecretStr | None = None

    # Limits: whole request body, decoded image bytes, decoded image pixels.
    max_body_bytes: int = Field(default=16 * MIB, ge=1024)
    # A request body must arrive in full within this time (a client trickling bytes cannot hold a connection).
    body_read_timeout_s: float = Field(default=60.0, gt=0.0)
    # Connections (and requests in flight) uvicorn accepts at once; beyond it, new ones get 503 at once.
    max_connections: int = Field(default=1000, ge=1)
    max_image_bytes: int = Field(default=10 * MIB, ge=1024)
    max_image_pixels: int = Field(default=6000 * 6000, ge=64 * 64)

    # Largest super-resolution input (width × height); outputs are up to 16× larger.
    max_upscale_input_pixels: int = Field(default=2048 * 2048, ge=64 * 64)

    # Server-side fetches (init images, webhooks, model downloads). Empty: loopback, private,
    # link-local and metadata addresses are refused. Entries are IPs, CIDRs or host names.
    fetch_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    fetch_timeout_s: float = Field(default=15.0, gt=0)
    fetch_max_redirects: int = Field(default=5, ge=0, le=20)

    # Jobs. A worker holds a lease on what it runs and renews it every lease_s/3; a lease not renewed
    # in time (crashed worker) puts the job back in the queue, at most job_max_attempts runs in all.
    job_lease_s: float = Field(default=30.0, ge=1.0)
    job_max_attempts: int = Field(default=3, ge=1, le=20)
    # How long a generation request waits for its job before answering `processing`.
    sync_wait_s: float = Field(default=5.0, ge=0.0, le=300.0)
    # The OpenAI and A1111 dialects are synchronous: how long one of their requests waits for its job at most.
    dialect_wait_s: float = Field(default=300.0, gt=0.0, le=3600.0)
    # Fair use: queued + running jobs one key may have at once.
    max_active_jobs_per_key: int = Field(default=100, ge=1)
    # Local worker subprocesses `serve` starts (0: API only).
    workers: int = Field(default=1, ge=0, le=64)
    # How much lower a worker `serve` starts runs than the API (Unix nice): on a shared box a job may use every
    # core, and the API must still answer fetches at once. Only those subprocesses; a plain `sdserver worker` not.
    worker_nice: int = Field(default=5, ge=0, le=19)
    # Worker engines: "diffusers", "upscale", "models" (load_model downloads), and "test" (deterministic
    # fakes for tests and demos).
    engines: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["diffusers", "upscale", "models"])
    # Device precision of the engines: auto picks fp16 on CUDA, bf16 on CPUs with native bf16, else fp32.
    diffusion_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    upscale_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # face_enhance on super_resolution: the restorer (official weights in `<models dir>/face_restorers/`) and
    # CodeFormer's fidelity (0: trust its face prior most, 1: stay closest to the input).
    face_restorer: Literal["gfpgan-1.4", "gfpgan-1.3", "codeformer"] = "gfpgan-1.4"
    codeformer_fidelity: float = Field(default=0.5, ge=0.0, le=1.0)
    # torch.compile backend for the denoiser (UNet/transformer), compiled and warmed up when a model loads
    # (docs/gpu.md); empty: off. "inductor" is torch's default compiler; "eager" only traces (a check that
    # compiling works).
    torch_compile: str = ""
    # Images above this many pixels decode through the VAE in tiles (bounded memory, faint blended seams).
    vae_tile_pixels: int = Field(default=2048 * 2048, ge=64 * 64)
    # Diffusion models a worker keeps loaded (least recently used goes first).
    diffusion_max_loaded: int = Field(default=1, ge=1, le=16)
    # Generation jobs a worker runs as one pipeline call when their settings match (docs/batching.md); 0: automatic
    # (4 on CPU; on CUDA from the free memory, at most 16). 1 turns batching off.
    max_batch: int = Field(default=0, ge=0, le=64)
    # How long a worker that claimed fewer jobs than max_batch waits for more batch-mates before it starts.
    batch_window_ms: float = Field(default=20.0, ge=0.0, le=2000.0)
    # The SDXL refiner `refiner: yes` runs with (a model id of family sdxl_refiner). Unset: the one installed
    # sdxl_refiner model, if there is exactly one.
    sdxl_refiner: str | None = None
    # Model used when a generation request names none (the vendor requires model_id; we allow a default).
    default_model_id: str | None = None
    # Model downloads (load_model): largest file accepted, and local folders a `url` may point into.
    model_download_max_bytes: int = Field(default=20 * 1024 * MIB, ge=MIB)
    model_import_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    # Where model files live (default `<data_dir>/models`). Boxes that mount one shared folder here (NFS, SMB, a
    # cloud file system) all see every model loaded through any of them.
    models_dir: Path | None = None
    # Publish each loaded model to the object store (content-addressed, sha256-verified) so workers on boxes with
    # their own disks pull it on first use. auto: when the object store is S3; yes: also the local folder; no: never.
    models_in_object_store: Literal["auto", "yes", "no"] = "auto"
    # Appended to the prompt when a request says `enhance_prompt: yes`.
    enhance_prompt_suffix: str = ", highly detailed, sharp focus, intricate details, professional lighting"
    # open_nsfw score at or above which an image counts as NSFW (safety checker and nsfw_image_check default).
    nsfw_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    # Addresses (IPs/CIDRs) that may read /metrics without an admin key, e.g. the Prometheus server.
    metrics_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # How often an idle worker looks for work when the store cannot push wake-ups (SQLite).
    worker_poll_s: float = Field(default=0.2, gt=0.0, le=10.0)

    # Webhooks: signed with HMAC-SHA256 (secret generated and kept in the database when not given).
    webhook_secret: SecretStr | None = None
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(default=6, ge=1, le=20)
    webhook_backoff_s: float = Field(default=2.0, gt=0)

    # ModelsLab paths answer HTTP 200 + status:"error" (what their clients expect); true sends real codes.
    real_status_codes: bool = False
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])

    _split_allowlist = field_validator("fetch_allowlist", "cors_origins", "engines", mode="before")(_split_list)
    _split_more = field_validator("model_import_dirs", "metrics_allowlist", mode="before")(_split_list)

    @field_validator("base_url", "s3_public_base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _check_storage(self) -> Settings:
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("storage=s3 needs SDSERVER_S3_BUCKET")
        if self.max_image_bytes > self.max_body_bytes:
            raise ValueError("max_image_bytes cannot exceed max_body_bytes")
        return self

    @property
    def external_base_url(self) -> str:
        return self.base_url or f"http://{self.host}:{self.port}"

    @property
    def sql_url(self) -> str:
        return self.database_url or f"sqlite:///{self.sqlite_file.resolve()}"

    @property
    def sqlite_file(self) -> Path:
        """The embedded default's database (used when no database_url is set)."""
        return self.data_dir / "sdserver.db"

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def models_path(self) -> Path:
        """The models folder every engine, the API catalog and the CLI use."""
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"


@dataclass(frozen=True)
class S3Config:
    """Object-store settings set at run time by `update_s3`; overrides the S3 settings of the environment."""

    bucket: str
    prefix: str
    endpoint_url: str | None
    region: str
    public_base_url: str | None
    access_key_id: str
    secret_access_key: str

    def apply_to(self, settings: Settings) -> Settings:
        """`settings` with storage switched to this bucket (everything else, like link lifetimes, kept)."""
        return settings.model_copy(
            update={
                "storage": "s3",
                "s3_bucket": self.bucket,
                "s3_prefix": self.prefix,
                "s3_endpoint_url": self.endpoint_url,
                "s3_region": self.region,
                "s3_public_base_url": self.public_base_url,
                "s3_access_key_id": SecretStr(self.access_key_id),
                "s3_secret_access_key": SecretStr(self.secret_access_key),
            }
        )

    def public(self) -> dict[str, Any]:
        """What may be shown: never the secret, and only the last characters of the access key id."""
        key_id = self.access_key_id
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "public_url": self.public_base_url,
            "aws_access_key_id": f"…{key_id[-4:]}" if len(key_id) > 8 else "…",
        }

    def scrub(self, text: str) -> str:
        """`text` with both credentials blanked out, for messages that may quote what a server sent back."""
        for secret in (self.secret_access_key, self.access_key_id):
            if secret:
                text = text.replace(secret, "***")
        return text
