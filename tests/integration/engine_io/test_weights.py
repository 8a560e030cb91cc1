"""Loading a local Diffusers-format directory, and the weights fingerprint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from farm.engine import weights as W
from farm.engine.components import Components
from farm.errors import ModelError, WeightsNotFound
from farm.profiles import PROFILES

from .conftest import TINY_SUBDIR, age_tree, tiny_profile

PROFILE = tiny_profile()


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa)


# -- loading -----------------------------------------------------------------------------------


def test_tiny_directory_loads_the_saved_model(models_path: Path, tiny_source: tuple[Path, Any]) -> None:
    _, pipe = tiny_source
    comps = W.load_components(PROFILE, models_path, "float32")
    assert isinstance(comps, Components)
    assert comps.profile is PROFILE and comps.dtype == "float32" and comps.expand_timesteps is False
    for name in ("text_encoder", "vae", "transformer", "transformer_2"):
        loaded, original = getattr(comps, name), getattr(pipe, name)
        assert type(loaded) is type(original)
        assert not loaded.training
        assert not any(p.requires_grad for p in loaded.parameters())
        assert all(p.device.type == "cpu" for p in loaded.parameters())
        assert _state_equal(loaded, original), name
    assert not _state_equal(comps.transformer, comps.transformer_2)  # the two experts differ
    assert type(comps.scheduler).__name__ == "UniPCMultistepScheduler"
    assert comps.scheduler.config.flow_shift == pipe.scheduler.config.flow_shift
    text = "a red cat runs in the rain"
    assert comps.tokenizer(text).input_ids == pipe.tokenizer(text).input_ids
    assert comps.weights_fingerprint == W.weights_fingerprint(models_path / TINY_SUBDIR)


def test_loaded_model_renders_like_the_original(models_path: Path, tiny_source: tuple[Path, Any]) -> None:
    from diffusers import WanPipeline

    _, pipe = tiny_source
    comps = W.load_components(PROFILE, models_path, "float32")
    loaded = WanPipeline(
        tokenizer=comps.tokenizer, text_encoder=comps.text_encoder, vae=comps.vae, scheduler=comps.scheduler,
        transformer=comps.transformer, transformer_2=comps.transformer_2, boundary_ratio=0.875,
    )
    kwargs: dict[str, Any] = dict(prompt="a cat runs", height=32, width=32, num_frames=5,
                                  num_inference_steps=2, guidance_scale=4.0, output_type="np")
    with torch.inference_mode():
        a = loaded(generator=torch.Generator("cpu").manual_seed(7), **kwargs).frames
        b = pipe(generator=torch.Generator("cpu").manual_seed(7), **kwargs).frames
    assert a.shape == (1, 5, 32, 32, 3)
    assert (a == b).all()


def test_dtype_bfloat16_keeps_the_vae_in_float32(models_path: Path) -> None:
    comps = W.load_components(PROFILE, models_path, "bfloat16")
    assert comps.dtype == "bfloat16"
    assert comps.transformer.dtype == torch.bfloat16
    assert comps.transformer_2.dtype == torch.bfloat16
    assert comps.text_encoder.dtype == torch.bfloat16
    assert comps.vae.dtype == torch.float32


def test_unknown_dtype_is_refused(models_path: Path) -> None:
    with pytest.raises(ModelError, match="unsupported dtype"):
        W.load_components(PROFILE, models_path, "int8")


def test_every_load_is_local_only(models_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import diffusers
    import transformers

    calls: list[tuple[str, dict[str, Any]]] = []

    def spy(owner: Any, attr: str, cls_name: str) -> None:
        original = getattr(owner, attr).from_pretrained

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            calls.append((cls_name, kwargs))
            return original(*args, **kwargs)

        monkeypatch.setattr(getattr(owner, attr), "from_pretrained", wrapped)

    spy(transformers, "AutoTokenizer", "AutoTokenizer")
    spy(transformers, "UMT5EncoderModel", "UMT5EncoderModel")
    spy(diffusers, "AutoencoderKLWan", "AutoencoderKLWan")
    spy(diffusers, "WanTransformer3DModel", "WanTransformer3DModel")
    spy(diffusers, "UniPCMultistepScheduler", "UniPCMultistepScheduler")
    W.load_components(PROFILE, models_path, "float32")
    names = sorted(name for name, _ in calls)
    assert names == sorted(["AutoTokenizer", "UMT5EncoderModel", "AutoencoderKLWan", "WanTransformer3DModel",
                            "WanTransformer3DModel", "UniPCMultistepScheduler"])
    assert all(kw.get("local_files_only") is True for _, kw in calls)


def test_dense_directory_reads_expand_timesteps(models_path: Path) -> None:
    directory = models_path / TINY_SUBDIR
    shutil.rmtree(directory / "transformer_2")
    index = json.loads((directory / "model_index.json").read_text())
    index.update(transformer_2=[None, None], boundary_ratio=None, expand_timesteps=True)
    (directory / "model_index.json").write_text(json.dumps(index))
    _edit_json(directory / "scheduler" / "scheduler_config.json", flow_shift=5.0)  # the dense profile's
    comps = W.load_components(tiny_profile(dense=True), models_path, "float32")
    assert comps.expand_timesteps is True
    assert comps.transformer_2 is None
    with pytest.raises(ModelError, match="dense \\(one transformer\\)"):  # a two-expert profile, dense dir
        (directory / "transformer_2").mkdir()
        (directory / "transformer_2" / "config.json").write_text("{}")
        (directory / "transformer_2" / "model.safetensors").write_bytes(b"x")
        W.load_components(PROFILE, models_path, "float32")


def test_builtin_profile_has_no_directory(models_path: Path) -> None:
    with pytest.raises(ModelError, match="built in"):
        W.load_components(PROFILES["tiny"], models_path, "float32")


# -- missing pieces ----------------------------------------------------------------------------


def _no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything is loaded (the check must come first)."""
    import diffusers

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("loaded before the directory was checked")

    monkeypatch.setattr(diffusers.WanTransformer3DModel, "from_pretrained", boom)
    monkeypatch.setattr(W, "hash_file", boom)


def test_missing_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_loading(monkeypatch)
    with pytest.raises(WeightsNotFound) as err:
        W.load_components(PROFILE, tmp_path / "nowhere", "float32")
    directory = str(tmp_path / "nowhere" / TINY_SUBDIR)
    assert err.value.directory == directory
    message = str(err.value)
    assert directory in message
    assert "does not exist" in message
    assert "farm never downloads at run time" in message
    assert "model_index.json" in message  # what is expected


def test_missing_config_file(models_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_loading(monkeypatch)
    (models_path / TINY_SUBDIR / "transformer_2" / "config.json").unlink()
    with pytest.raises(WeightsNotFound) as err:
        W.load_components(PROFILE, models_path, "float32")
    message = str(err.value)
    assert str(models_path / TINY_SUBDIR) in message
    missing = message.split("missing: ")[1].split(". Expected")[0]
    assert missing == "transformer_2/config.json"


def test_missing_weights(models_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_loading(monkeypatch)
    (models_path / TINY_SUBDIR / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsNotFound) as err:
        W.load_components(PROFILE, models_path, "float32")
    missing = str(err.value).split("missing: ")[1].split(". Expected")[0]
    assert missing.startswith("transformer/ has no weights")
    assert "transformer_2" not in missing


def test_empty_weight_file_and_empty_tokenizer(models_path: Path) -> None:
    directory = models_path / TINY_SUBDIR
    (directory / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    shutil.rmtree(directory / "tokenizer")
    (directory / "tokenizer").mkdir()
    missing = W.missing_pieces(PROFILE, directory)
    assert "tokenizer/ (empty folder)" in missing
    assert any(m.startswith("vae/ has no weights") for m in missing)
    assert len(missing) == 2


def test_sharded_weights_with_a_missing_shard(models_path: Path) -> None:
    folder = models_path / TINY_SUBDIR / "transformer"
    first_shard = folder / "diffusion_pytorch_model-00001-of-00002.safetensors"
    (folder / "diffusion_pytorch_model.safetensors").rename(first_shard)
    index = {"metadata": {}, "weight_map": {
        "a.weight": "diffusion_pytorch_model-00001-of-00002.safetensors",
        "b.weight": "diffusion_pytorch_model-00002-of-00002.safetensors",
    }}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    assert W.missing_pieces(PROFILE, models_path / TINY_SUBDIR) == [
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors "
        "(shard listed in diffusion_pytorch_model.safetensors.index.json)"
    ]
    (folder / "diffusion_pytorch_model-00002-of-00002.safetensors").write_bytes(b"shard")
    assert W.missing_pieces(PROFILE, models_path / TINY_SUBDIR) == []


def test_complete_directory_has_nothing_missing(models_path: Path) -> None:
    assert W.missing_pieces(PROFILE, models_path / TINY_SUBDIR) == []
    W.check_weights(PROFILE, models_path / TINY_SUBDIR)


# -- fingerprint -------------------------------------------------------------------------------

_FINGERPRINT_SCRIPT = """
import sys
from pathlib import Path
from farm.engine.weights import weights_fingerprint
print(weights_fingerprint(Path(sys.argv[1])))
"""


def _fingerprint_in_child(directory: Path, hashseed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    out = subprocess.run([sys.executable, "-c", _FINGERPRINT_SCRIPT, str(directory)], env=env,
                         capture_output=True, text=True, check=True, timeout=120)
    return out.stdout.strip()


def test_fingerprint_is_content_based_and_stable_across_processes(
    tmp_path: Path, tiny_source: tuple[Path, Any]
) -> None:
    src, _ = tiny_source
    a, b = tmp_path / "a" / "model", tmp_path / "b" / "elsewhere"
    shutil.copytree(src, a)
    shutil.copytree(src, b)  # other path, new mtimes: same content
    fa = _fingerprint_in_child(a, "1")
    fb = _fingerprint_in_child(b, "2")
    assert len(fa) == 64 and int(fa, 16) >= 0
    assert fa == fb == W.weights_fingerprint(a)


def test_fingerprint_is_cached_beside_the_weights(models_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = models_path / TINY_SUBDIR
    first = W.weights_fingerprint(directory)
    cache = json.loads((directory / W.FINGERPRINT_CACHE_FILENAME).read_text())
    assert cache["fingerprint"] == first
    assert sorted(cache["files"]) == W.fingerprint_files(directory)
    assert "transformer/diffusion_pytorch_model.safetensors" in cache["files"]

    def no_hashing(path: Path, *args: Any) -> str:
        raise AssertionError(f"hashed {path} although it is cached")

    monkeypatch.setattr(W, "hash_file", no_hashing)
    assert W.weights_fingerprint(directory) == first


def test_fingerprint_changes_when_a_file_changes(models_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = models_path / TINY_SUBDIR
    first = W.weights_fingerprint(directory)
    hashed: list[str] = []
    real = W.hash_file

    def counting(path: Path, *args: Any) -> str:
        hashed.append(Path(path).relative_to(directory).as_posix())
        return real(path, *args)

    monkeypatch.setattr(W, "hash_file", counting)
    # same size, other content, later mtime: the cache entry no longer matches
    config = directory / "transformer_2" / "config.json"
    text = config.read_text()
    config.write_text(text.replace('"num_layers": 2', '"num_layers": 3'))
    assert config.stat().st_size == len(text)
    age_tree(directory, 1800)
    second = W.weights_fingerprint(directory)
    assert second != first
    assert "transformer_2/config.json" in hashed
    # an mtime change alone re-hashes but keeps the content fingerprint
    hashed.clear()
    age_tree(directory, 900)
    assert W.weights_fingerprint(directory) == second
    assert len(hashed) == len(W.fingerprint_files(directory))


def test_fingerprint_covers_component_files_not_docs(models_path: Path) -> None:
    directory = models_path / TINY_SUBDIR
    first = W.weights_fingerprint(directory)
    (directory / "README.md").write_text("docs do not change the frames")
    (directory / ".cache").mkdir()
    (directory / ".cache" / "download.lock").write_text("x")
    assert W.weights_fingerprint(directory) == first
    (directory / "transformer" / "extra.json").write_text("{}")
    assert W.weights_fingerprint(directory) != first


def test_recent_files_are_not_trusted_from_the_cache(models_path: Path) -> None:
    directory = models_path / TINY_SUBDIR
    (directory / "vae" / "new.json").write_text("{}")  # mtime now: within the racy window
    W.weights_fingerprint(directory)
    cache = json.loads((directory / W.FINGERPRINT_CACHE_FILENAME).read_text())
    assert "vae/new.json" not in cache["files"]
    assert "vae/config.json" in cache["files"]


def _refuse_writes_under(monkeypatch: pytest.MonkeyPatch, *roots: Path) -> None:
    """Simulate read-only locations (tests run as root, where chmod does not stop writes)."""
    from farm.store import files

    real = files.write_bytes_atomic

    def guarded(path: Path, data: bytes) -> None:
        if any(Path(path).is_relative_to(r) for r in roots):
            raise PermissionError(13, "Read-only file system", str(path))
        real(path, data)

    monkeypatch.setattr(files, "write_bytes_atomic", guarded)


def test_read_only_weights_cache_in_the_data_dir(
    models_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = models_path / TINY_SUBDIR
    data_dir = tmp_path / "data"
    _refuse_writes_under(monkeypatch, directory)
    first = W.weights_fingerprint(directory, cache_dir=data_dir)
    assert not (directory / W.FINGERPRINT_CACHE_FILENAME).exists()
    cached = list((data_dir / "weights-fingerprints").glob("*.json"))
    assert len(cached) == 1
    assert json.loads(cached[0].read_text())["directory"] == str(directory.resolve())

    def no_hashing(path: Path, *args: Any) -> str:
        raise AssertionError("hashed although cached in the data dir")

    monkeypatch.setattr(W, "hash_file", no_hashing)
    assert W.weights_fingerprint(directory, cache_dir=data_dir) == first


def test_unwritable_cache_never_fails(
    models_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = models_path / TINY_SUBDIR
    expected = W.weights_fingerprint(directory)
    (directory / W.FINGERPRINT_CACHE_FILENAME).unlink()
    _refuse_writes_under(monkeypatch, directory, tmp_path / "data")
    assert W.weights_fingerprint(directory, cache_dir=tmp_path / "data") == expected
    assert not (directory / W.FINGERPRINT_CACHE_FILENAME).exists()


def test_fingerprint_of_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFound, match="does not exist"):
        W.weights_fingerprint(tmp_path / "absent")


def test_hash_file_streams_in_chunks(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "blob.bin"
    data = os.urandom(3 * 1024 + 17)
    path.write_bytes(data)
    assert W.hash_file(path, chunk_bytes=1024) == hashlib.sha256(data).hexdigest()


# -- the directory's own settings against the profile --------------------------------------------


def _edit_json(path: Path, **values: Any) -> None:
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data))


def test_a_directory_that_agrees_with_its_profile_loads_and_records_its_settings(models_path: Path) -> None:
    comps = W.load_components(PROFILE, models_path, "float32")
    assert comps.directory_settings == {"boundary_ratio": PROFILE.boundary_ratio, "flow_shift": PROFILE.flow_shift}


def test_a_directory_whose_settings_disagree_with_its_profile_is_refused_naming_both_values(
    models_path: Path,
) -> None:
    directory = models_path / TINY_SUBDIR
    _edit_json(directory / "model_index.json", boundary_ratio=0.9)
    _edit_json(directory / "scheduler" / "scheduler_config.json", flow_shift=12.0)
    with pytest.raises(ModelError) as info:
        W.load_components(PROFILE, models_path, "float32")
    text = str(info.value)
    assert f"boundary_ratio: {directory / 'model_index.json'} says 0.9, profile tiny says 0.875" in text
    assert f"flow_shift: {directory / 'scheduler' / 'scheduler_config.json'} says 12, profile tiny says 3" in text


@pytest.mark.parametrize("edit", ["boundary_ratio", "flow_shift"])
def test_each_setting_alone_is_checked(models_path: Path, edit: str) -> None:
    directory = models_path / TINY_SUBDIR
    if edit == "boundary_ratio":
        _edit_json(directory / "model_index.json", boundary_ratio=0.5)
    else:
        _edit_json(directory / "scheduler" / "scheduler_config.json", flow_shift=3.5)
    with pytest.raises(ModelError, match=f"{edit}: .* says (0.5|3.5), profile tiny says"):
        W.load_components(PROFILE, models_path, "float32")


def test_an_euler_scheduler_directory_is_read_by_its_own_key(models_path: Path) -> None:
    config = models_path / TINY_SUBDIR / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 7.0,
                                  "num_train_timesteps": 1000}))
    found = W.directory_settings(models_path / TINY_SUBDIR, {"boundary_ratio": 0.875})
    assert found == {"boundary_ratio": 0.875, "flow_shift": 7.0}
