"""Loading a model from a local Diffusers-format directory, and the weights' content fingerprint.

farm never downloads weights at run time: every ``from_pretrained`` call gets
``local_files_only=True`` (passed as an argument; nothing is set in the environment), and before
anything is loaded the directory is checked for every file the profile needs, so a missing or
half-copied model fails at once with :class:`farm.errors.WeightsNotFound` naming the directory,
exactly what is missing and what is expected.

The fingerprint (:func:`weights_fingerprint`) is content based: sha256 over the sorted
``(relative path, size, sha256 of content)`` of ``model_index.json`` and every file of the
components it names (weights, configs, tokenizer files). Hashing 60+ GiB takes a while, so each
file's hash is cached in ``.farm-fingerprint.json`` beside the weights, keyed by the file's
``(size, mtime_ns)``: a changed file is hashed again, an unchanged one is not. If the weights
directory is read-only the cache goes to ``cache_dir`` instead; if neither can be written the
fingerprint is still returned (only slower next time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.engine.components import Components
from farm.errors import ModelError, WeightsNotFound
from farm.profiles import ModelProfile

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin")
INDEX_SUFFIXES: tuple[str, ...] = (".safetensors.index.json", ".bin.index.json")
MODEL_INDEX_FILENAME = "model_index.json"
FINGERPRINT_CACHE_FILENAME = ".farm-fingerprint.json"
FINGERPRINT_CACHE_FORMAT = "farm.weights-fingerprint/1"
#: Domain tag of the fingerprint; changing it changes every fingerprint.
FINGERPRINT_DOMAIN = "farm.weights/1"
#: Read size when hashing (large reads keep the hashing at disk speed).
HASH_CHUNK_BYTES = 8 << 20
#: A file modified less than this long before it was hashed is not cached (a later change within
#: the filesystem's mtime granularity could otherwise go unnoticed).
RACY_WINDOW_SECONDS = 2.0
#: Files hashed in parallel (hashlib and file reads release the GIL).
DEFAULT_HASH_WORKERS = 4
DOWNLOAD_HINT = "download the Diffusers-format weights to this directory; farm never downloads at run time"

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


# -- checking ----------------------------------------------------------------------------------


def model_directory(profile: ModelProfile, models_path: Path) -> Path:
    """Where ``profile``'s Diffusers-format directory is: ``models_path / weights_subdir``."""
    if profile.source != "directory" or not profile.weights_subdir:
        raise ModelError(f"model {profile.name!r} is built in code; it has no weights directory")
    return Path(models_path) / profile.weights_subdir


def weight_components(profile: ModelProfile) -> tuple[str, ...]:
    """The component folders that hold weights.

    Those whose ``config.json`` the profile requires (text encoder, VAE, experts; not the
    scheduler or the tokenizer).
    """
    out = []
    for rel in profile.required_files:
        parts = rel.split("/")
        if len(parts) == 2 and parts[1] == "config.json":
            out.append(parts[0])
    return tuple(out)


def _nonempty_file(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _missing_weights(directory: Path, component: str) -> list[str]:
    """What is missing from one component folder's weights ([] when they look complete)."""
    folder = directory / component
    if not folder.is_dir():
        return [f"{component}/ (folder with *.safetensors or *.bin weights)"]
    names = sorted(p.name for p in folder.iterdir())
    indexes = [n for n in names if n.endswith(INDEX_SUFFIXES)]
    if indexes:
        missing = []
        for name in indexes:
            try:
                weight_map = json.loads((folder / name).read_text(encoding="utf-8"))["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                missing.append(f"{component}/{name} (unreadable shard index)")
                continue
            missing += [
                f"{component}/{shard} (shard listed in {name})"
                for shard in shards
                if not _nonempty_file(folder / shard)
            ]
        return missing
    if any(n.endswith(WEIGHT_SUFFIXES) and _nonempty_file(folder / n) for n in names):
        return []
    return [f"{component}/ has no weights (*.safetensors or *.bin, or a sharded *.index.json)"]


def missing_pieces(profile: ModelProfile, directory: Path) -> list[str]:
    """Everything ``directory`` lacks to be ``profile``'s Diffusers-format model ([] if complete)."""
    if not directory.is_dir():
        return [f"the directory itself ({directory} does not exist or is not a directory)"]
    missing = []
    for rel in profile.required_files:
        path = directory / rel
        if path.is_dir():
            if not any(path.iterdir()):
                missing.append(f"{rel}/ (empty folder)")
        elif not _nonempty_file(path):
            missing.append(rel)
    for component in weight_components(profile):
        if (directory / component / "config.json").is_file() or (directory / component).is_dir():
            missing += _missing_weights(directory, component)
        else:
            missing.append(f"{component}/ (weights)")
    # a component named twice (missing config and missing folder) is listed once
    return list(dict.fromkeys(missing))


def expected_layout(profile: ModelProfile) -> str:
    """The directory layout ``profile`` needs, in words (for error messages)."""
    files = ", ".join(profile.required_files)
    comps = ", ".join(f"{c}/" for c in weight_components(profile))
    return f"a Diffusers-format directory with {files}, and weights (*.safetensors or *.bin) in {comps}"


def check_weights(profile: ModelProfile, directory: Path) -> None:
    """Raise :class:`WeightsNotFound` unless ``directory`` has everything ``profile`` needs."""
    missing = missing_pieces(profile, directory)
    if missing:
        raise WeightsNotFound(
            str(directory),
            f"missing: {'; '.join(missing)}. Expected {expected_layout(profile)} "
            f"(model {profile.name}). Hint: {DOWNLOAD_HINT}.",
        )


def read_model_index(directory: Path) -> dict[str, Any]:
    """The parsed ``model_index.json`` of ``directory``; :class:`WeightsNotFound` when it is unreadable."""
    path = directory / MODEL_INDEX_FILENAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsNotFound(str(directory), f"{MODEL_INDEX_FILENAME} is unreadable ({exc}). "
                              f"Hint: {DOWNLOAD_HINT}.") from exc
    if not isinstance(data, dict):
        raise WeightsNotFound(str(directory), f"{MODEL_INDEX_FILENAME} is not a JSON object")
    return data


def _declared_components(model_index: dict[str, Any]) -> list[str]:
    """Component names model_index.json declares (``name: [library, class]``, not null)."""
    return sorted(
        k for k, v in model_index.items()
        if not k.startswith("_")
        and isinstance(v, list)
        and len(v) == 2
        and all(isinstance(x, str) for x in v)
    )


# -- fingerprint -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FileStat:
    size: int
    mtime_ns: int


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _walk_files(directory: Path, folder: Path) -> Iterable[str]:
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(directory)
            if not _hidden(rel) and (directory / rel).is_file():
                yield rel.as_posix()


def fingerprint_files(directory: Path) -> list[str]:
    """Relative paths (posix, sorted) that the fingerprint covers.

    ``model_index.json`` and every file under the components it declares. Without a readable
    model_index.json: every file. Hidden files and folders (``.cache``, ``.git``, farm's own
    cache file) are left out.
    """
    directory = Path(directory)
    try:
        model_index = json.loads((directory / MODEL_INDEX_FILENAME).read_text(encoding="utf-8"))
        components = _declared_components(model_index) if isinstance(model_index, dict) else None
    except (OSError, ValueError):
        components = None
    if components is None:
        return sorted(_walk_files(directory, directory))
    files = {MODEL_INDEX_FILENAME}
    for name in components:
        if (directory / name).is_dir():
            files.update(_walk_files(directory, directory / name))
    return sorted(files)


def hash_file(path: Path, chunk_bytes: int = HASH_CHUNK_BYTES) -> str:
    """sha256 of a file, streamed in ``chunk_bytes`` reads into one reused buffer."""
    digest = hashlib.sha256()
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def _stat(path: Path) -> _FileStat:
    st = path.stat()
    return _FileStat(st.st_size, st.st_mtime_ns)


def _cache_paths(directory: Path, cache_dir: Path | None) -> list[Path]:
    paths = [directory / FINGERPRINT_CACHE_FILENAME]
    if cache_dir is not None:
        key = hashlib.sha256(str(directory.resolve()).encode("utf-8")).hexdigest()[:32]
        paths.append(Path(cache_dir) / "weights-fingerprints" / f"{key}.json")
    return paths


def _load_cache(path: Path, directory: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FINGERPRINT_CACHE_FORMAT:
        return {}
    if path.parent != directory and data.get("directory") != str(directory.resolve()):
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _cached_hash(caches: list[dict[str, dict[str, Any]]], rel: str, stat: _FileStat) -> str | None:
    for cache in caches:
        entry = cache.get(rel)
        if (
            isinstance(entry, dict)
            and entry.get("size") == stat.size
            and entry.get("mtime_ns") == stat.mtime_ns
            and isinstance(entry.get("sha256"), str)
            and len(entry["sha256"]) == 64
        ):
            return str(entry["sha256"])
    return None


def _save_cache(paths: list[Path], directory: Path, fingerprint: str, entries: dict[str, Any]) -> None:
    from farm.store.files import write_bytes_atomic

    payload = {
        "format": FINGERPRINT_CACHE_FORMAT,
        "directory": str(directory.resolve()),
        "fingerprint": fingerprint,
        "files": entries,
    }
    data = (json.dumps(payload, sort_keys=True, indent=1) + "\n").encode("utf-8")
    for path in paths:
        try:
            if path.is_file() and path.read_bytes() == data:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, data)
            return
        except OSError as exc:
            log.debug("cannot write the weights fingerprint cache %s: %s", path, exc)
    log.info("weights fingerprint of %s not cached (no writable cache location)", directory)


def _hash_stable(path: Path) -> tuple[str, _FileStat, bool]:
    """Hash ``path``; returns (sha256, stat, cacheable). Raises ModelError if it keeps changing."""
    for _ in range(2):
        before = _stat(path)
        started_ns = time.time_ns()
        digest = hash_file(path)
        if _stat(path) == before:
            cacheable = before.mtime_ns <= started_ns - int(RACY_WINDOW_SECONDS * 1e9)
            return digest, before, cacheable
    raise ModelError(f"{path} changed while it was being hashed; is a download or copy still running?")


def weights_fingerprint(
    directory: Path, *, cache_dir: Path | None = None, max_workers: int = DEFAULT_HASH_WORKERS
) -> str:
    """Content fingerprint of a Diffusers-format directory (sha256 hex).

    sha256 over ``farm.weights/1`` and, for each file of :func:`fingerprint_files` in sorted order,
    ``relative path, size, sha256 of content``. Per-file hashes are cached (see the module doc).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise WeightsNotFound(str(directory), f"the directory does not exist. Hint: {DOWNLOAD_HINT}.")
    rels = fingerprint_files(directory)
    cache_paths = _cache_paths(directory, cache_dir)
    caches = [_load_cache(p, directory) for p in cache_paths]

    hashes: dict[str, tuple[str, _FileStat, bool]] = {}
    todo: list[str] = []
    for rel in rels:
        stat = _stat(directory / rel)
        cached = _cached_hash(caches, rel, stat)
        if cached is None:
            todo.append(rel)
        else:
            hashes[rel] = (cached, stat, True)
    if todo:
        log.info("hashing %d weight files in %s", len(todo), directory)
        workers = max(1, min(max_workers, len(todo)))
        if workers == 1:
            results = [_hash_stable(directory / rel) for rel in todo]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="farm-hash") as pool:
                results = list(pool.map(lambda r: _hash_stable(directory / r), todo))
        hashes.update(zip(todo, results, strict=True))

    digest = hashlib.sha256(f"{FINGERPRINT_DOMAIN}\n".encode("ascii"))
    for rel in rels:
        sha, stat, _ = hashes[rel]
        digest.update(f"{rel}\t{stat.size}\t{sha}\n".encode())
    fingerprint = digest.hexdigest()

    entries = {
        rel: {"size": stat.size, "mtime_ns": stat.mtime_ns, "sha256": sha}
        for rel, (sha, stat, cacheable) in hashes.items()
        if cacheable
    }
    if todo or not caches[0]:  # something new to record, or no cache beside the weights yet
        _save_cache(cache_paths, directory, fingerprint, entries)
    return fingerprint


# -- loading -----------------------------------------------------------------------------------


def _torch_dtype(name: str) -> Any:
    import torch

    if name not in DTYPES:
        raise ModelError(f"unsupported dtype {name!r}; supported: {', '.join(DTYPES)}")
    return getattr(torch, name)


def _frozen(module: Any) -> Any:
    module.eval()
    module.requires_grad_(False)
    return module


def _own_memory_(module: Any) -> None:
    """Copy every parameter and buffer into fresh process memory, one tensor at a time.

    ``from_pretrained`` leaves tensors backed by the memory-mapped safetensors file, at offsets set
    by the file's header length: not 64-byte aligned, and CPU kernels then take other code paths
    (checked: the same weights gave outputs ~3e-7 apart from an aligned copy). Copying makes the
    frames depend on the weight values only, not on the file layout, and the model no longer reads
    a file that could change (or be truncated) while it runs.
    """
    import torch

    for tensor in [*module.parameters(), *module.buffers()]:
        tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)


def _load(component: str, directory: Path, loader: Any) -> Any:
    """Run one component's loader; turn a library failure into a ModelError naming the folder."""
    try:
        return loader()
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise ModelError(f"loading {component} from {directory / component} failed: "
                         f"{type(exc).__name__}: {exc}") from exc


def _scheduler_class(model_index: dict[str, Any], directory: Path) -> Any:
    import diffusers
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    entry = model_index.get("scheduler")
    name = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ModelError(
            f"{directory / MODEL_INDEX_FILENAME}: scheduler {entry!r} is not a diffusers scheduler"
        )
    return cls


#: Where a Diffusers-format scheduler config keeps the flow shift, by scheduler class.
_SHIFT_KEYS: dict[str, str] = {"UniPCMultistepScheduler": "flow_shift", "FlowMatchEulerDiscreteScheduler": "shift"}
#: Two settings agree when they differ by less than this (JSON floats round-trip exactly anyway).
_SETTING_TOLERANCE = 1e-9


def directory_settings(directory: Path, model_index: dict[str, Any]) -> dict[str, float]:
    """The render settings a Diffusers-format directory carries: ``boundary_ratio``, ``flow_shift``.

    ``boundary_ratio`` from ``model_index.json`` (two-expert pipelines), ``flow_shift`` from
    ``scheduler/scheduler_config.json`` (``flow_shift`` of UniPC, ``shift`` of flow-match Euler).
    A setting the directory does not carry is left out.
    """
    found: dict[str, float] = {}
    boundary = model_index.get("boundary_ratio")
    if isinstance(boundary, int | float) and not isinstance(boundary, bool):
        found["boundary_ratio"] = float(boundary)
    config_path = directory / "scheduler" / "scheduler_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return found
    key = _SHIFT_KEYS.get(str(config.get("_class_name")), "flow_shift") if isinstance(config, dict) else None
    shift = config.get(key) if key is not None else None
    if isinstance(shift, int | float) and not isinstance(shift, bool):
        found["flow_shift"] = float(shift)
    return found


def check_directory_settings(profile: ModelProfile, directory: Path, model_index: dict[str, Any]) -> dict[str, float]:
    """Refuse a directory whose own settings disagree with its profile; return them (recorded).

    A job's canonical spec (and so its job key) takes ``boundary_ratio`` and ``flow_shift`` from
    the profile when it does not set them: a directory that says otherwise would render
    something its key does not name, or silently lose its own values. :class:`ModelError` names
    every disagreement, both values and the file.
    """
    found = directory_settings(directory, model_index)
    wanted = {"boundary_ratio": profile.boundary_ratio, "flow_shift": profile.flow_shift}
    where = {"boundary_ratio": directory / MODEL_INDEX_FILENAME,
             "flow_shift": directory / "scheduler" / "scheduler_config.json"}
    problems = []
    for name, value in found.items():
        want = wanted[name]
        if want is None or abs(value - want) > _SETTING_TOLERANCE:
            said = "nothing (a dense model)" if want is None else f"{want:g}"
            problems.append(f"{name}: {where[name]} says {value:g}, profile {profile.name} says {said}")
    if problems:
        raise ModelError(
            f"{directory} disagrees with profile {profile.name} ({'; '.join(problems)}). Job keys name the "
            "profile's values; fix the directory's file(s) to the profile's values (the weights fingerprint "
            "records the change) or point the profile at a directory made for it"
        )
    return found


def load_components(
    profile: ModelProfile, models_path: Path, dtype: str, *, cache_dir: Path | None = None
) -> Components:
    """Load ``profile``'s model from ``models_path / profile.weights_subdir`` onto the CPU.

    Checks the directory first (:class:`WeightsNotFound` listing what is missing; :class:`ModelError`
    when its ``boundary_ratio`` or scheduler ``flow_shift`` disagrees with the profile), fingerprints
    the weights, then loads every component with ``local_files_only=True``: experts and text
    encoder in ``dtype``, the VAE in float32 (as diffusers' Wan examples do); all in eval mode
    with gradients off. ``cache_dir`` receives the fingerprint cache if the weights directory
    is read-only.
    """
    directory = model_directory(profile, models_path)
    check_weights(profile, directory)
    torch_dtype = _torch_dtype(dtype)
    model_index = read_model_index(directory)
    declared = set(_declared_components(model_index))
    if profile.two_expert != ("transformer_2" in declared):
        kind = "two-expert" if "transformer_2" in declared else "dense (one transformer)"
        raise ModelError(f"{directory} holds a {kind} model, but profile {profile.name} is {profile.kind}")
    settings = check_directory_settings(profile, directory, model_index)
    fingerprint = weights_fingerprint(directory, cache_dir=cache_dir)

    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    scheduler_cls = _scheduler_class(model_index, directory)
    local: dict[str, Any] = {"local_files_only": True}
    tokenizer = _load("tokenizer", directory,
                      lambda: AutoTokenizer.from_pretrained(directory / "tokenizer", **local))
    text_encoder = _load("text_encoder", directory, lambda: UMT5EncoderModel.from_pretrained(
        directory / "text_encoder", dtype=torch_dtype, **local))
    # (diffusers' ModelMixin.from_pretrained has no type hints: the no-untyped-call ignores below)
    vae = _load("vae", directory,
                lambda: AutoencoderKLWan.from_pretrained(  # type: ignore[no-untyped-call]
                    directory / "vae", torch_dtype=torch.float32, **local))
    transformer = _load("transformer", directory,
                        lambda: WanTransformer3DModel.from_pretrained(  # type: ignore[no-untyped-call]
                            directory / "transformer", torch_dtype=torch_dtype, **local))
    transformer_2 = None
    if profile.two_expert:
        transformer_2 = _load("transformer_2", directory,
                              lambda: WanTransformer3DModel.from_pretrained(  # type: ignore[no-untyped-call]
                                  directory / "transformer_2", torch_dtype=torch_dtype, **local))
    scheduler = _load("scheduler", directory,
                      lambda: scheduler_cls.from_pretrained(directory / "scheduler", **local))
    for module in (text_encoder, vae, transformer, transformer_2):
        if module is not None:
            _own_memory_(_frozen(module.to("cpu")))
    return Components(
        profile=profile,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
        transformer_2=transformer_2,
        expand_timesteps=bool(model_index.get("expand_timesteps", False)),
        weights_fingerprint=fingerprint,
        dtype=dtype,
        directory_settings=settings,
    )
