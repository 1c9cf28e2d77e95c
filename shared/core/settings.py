"""Settings from the environment, all under the ``TAGSMITH_`` prefix.

A process reads them once, at start (``read_settings()`` in its entry point: the command line, an
app's lifespan), and passes them down; nothing reads the environment later.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")  # the backbone's (shared/models/backbone/runtime.py)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# S3 bucket naming rules: 3-63 of a-z 0-9 . -, starting and ending with a letter or digit.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


class Settings(BaseSettings):
    """Every knob of tagsmith; ``TAGSMITH_<NAME>`` sets ``<name>``."""

    model_config = SettingsConfigDict(env_prefix="TAGSMITH_")

    # Where the embedded default keeps its Redis data and local object store.
    data_dir: Path = Path("tagsmith-data")
    # Redis; empty means `tagsmith serve` starts its own server in data_dir.
    redis_url: str = ""
    key_prefix: str = "tagsmith"
    queue_name: str = "tagsmith-training"
    # S3 object store; an empty endpoint means a local folder in data_dir.
    s3_endpoint: str = ""  # host:port, or http(s)://host:port (the scheme then sets s3_secure)
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "tagsmith"
    s3_secure: bool = False
    s3_region: str = ""
    # HTTP.
    host: str = "127.0.0.1"
    port: int = 5000
    # Limits.
    max_upload_bytes: int = 25 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    decode_budget_pixels: int = 100_000_000  # decoded pixels in memory at once, all requests and jobs together
    max_archive_bytes: int = 160 * 1024 * 1024  # a state archive: what /get_state gives at max_tags (about 11 KB a model)
    max_archive_members: int = 10_001
    max_backup_bytes: int = 4 * 1024 * 1024 * 1024  # a backup to restore, spooled to a temporary file
    max_tag_length: int = 64
    max_tags: int = 10_000  # tags with examples or a model; a new one beyond is refused
    min_examples: int = 1  # of each kind, for a training to be queued; 1 keeps the seed's one-of-each flow
    body_read_timeout_s: float = 30.0  # longest wait for the next piece of a request body
    body_min_rate: int = 16 * 1024  # bytes/s a body must keep up (each piece buys at most body_read_timeout_s ahead)
    max_body_bytes_in_flight: int = 512 * 1024 * 1024  # request bodies held in memory at once, all requests
    max_unsent_bytes: int = 512 * 1024 * 1024  # answers written but not yet read by their clients, all connections
    max_header_bytes: int = 16 * 1024  # request line and headers
    header_timeout_s: float = 10.0  # from a connection's start or a request's first byte to its headers' end
    max_connections: int = 1000  # open at once; a new one beyond gets 503 and is closed
    keep_alive_s: float = 5.0  # how long an idle kept-alive connection stays open
    max_batch_files: int = 100  # images in one /custom/add_many request
    max_batch_bytes: int = 256 * 1024 * 1024  # body of one /custom/add_many request
    # Suggestions rank at most this many of the newest unassigned images.
    suggest_max_candidates: int = 1000
    # Access control: comma-separated API keys; empty means no key is needed.
    api_keys: str = ""
    # Host names requests may name (comma-separated; "*": any); serve's own --host is added.
    allowed_hosts: str = "localhost,127.0.0.1,::1"
    # Logs: one JSON object per line.
    log_level: str = "INFO"
    # Models.
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:<index>"
    # Backbone runtime: "auto" (torch on CUDA, else OpenVINO, else ONNX Runtime), "torch",
    # "onnxruntime" or "openvino". The exported runtimes use an ONNX file built once from torch.
    runtime: str = "auto"
    model_cache_dir: Path = Path("~/.cache/tagsmith")
    torch_threads: int = 0  # CPU threads of the backbone; 0: all cores
    keyword_threshold: float = 0.1
    embed_batch_size: int = 32
    predict_batch_size: int = 8  # most concurrent predict requests sharing one forward pass
    # CUDA workers decode stored JPEGs on the GPU (nvJPEG): much faster, but their features are within
    # the tolerance of bench/device_decode.py of the CPU path's rather than equal to them. Off until
    # measured on a GPU machine.
    device_decode: bool = False
    # How much lower `tagsmith serve` runs its worker's CPU priority (nice): training and library
    # embedding yield to requests on the cores they share.
    worker_nice: int = Field(default=10, ge=0, le=19)
    # Training jobs and workers.
    training_timeout_s: int = 3600
    heartbeat_ttl_s: int = 30  # a training whose worker stops beating for this long is abandoned
    maintenance_interval_s: int = 15  # how often idle workers look for abandoned trainings
    abandoned_retries: int = 1  # times an abandoned training is queued again before it fails
    # Retention.
    task_ttl_s: int = 7 * 24 * 3600  # how long a finished or failed training's status stays readable
    keep_versions: int = 10  # earlier versions of a tag kept besides the current one (for rollback)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError("TAGSMITH_DEVICE must be auto, cpu, cuda or cuda:<index>")
        return value

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, value: str) -> str:
        if value not in RUNTIMES:
            raise ValueError(f"TAGSMITH_RUNTIME must be one of {', '.join(RUNTIMES)}")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"TAGSMITH_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        return value

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError("TAGSMITH_PORT must be a port number, 1-65535")
        return value

    @field_validator("s3_bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not _BUCKET.fullmatch(value) or ".." in value:
            raise ValueError("TAGSMITH_S3_BUCKET must be 3-63 of a-z 0-9 . - (an S3 bucket name)")
        return value

    @field_validator(
        "heartbeat_ttl_s", "maintenance_interval_s", "embed_batch_size", "training_timeout_s", "task_ttl_s",
        "body_min_rate", "max_header_bytes", "max_connections",
    )
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("abandoned_retries", "keep_versions")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be 0 or more")
        return value

    @field_validator("api_keys")
    @classmethod
    def _some_key(cls, value: str) -> str:
        if value and not any(key.strip() for key in value.split(",")):
            # " , " or a Secret's lone newline had meant no keys at all, so no key was needed, silently
            raise ValueError("names no key (only commas, spaces or line breaks): leave it empty for no keys, or list them")
        return value

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    def as_env(self) -> dict[str, str]:
        """These settings as ``TAGSMITH_*`` variables, for a child process to read the same."""
        return {f"TAGSMITH_{name.upper()}": _env_value(value) for name, value in self.model_dump().items()}


class SettingsError(ValueError):
    """A ``TAGSMITH_`` variable that cannot be used, said as a person sets it."""


def read_settings() -> Settings:
    """``Settings()``, or SettingsError naming each variable that is wrong and why (pydantic's own
    report names fields, not the variables a person sets, after a traceback)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():  # the values are not repeated: some are secrets
            name, message = f"TAGSMITH_{'_'.join(map(str, error['loc'])).upper()}", error["msg"].removeprefix("Value error, ")
            problems.append(message if message.startswith(name) else f"{name}: {message}")
        raise SettingsError("; ".join(problems)) from None


def _env_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
