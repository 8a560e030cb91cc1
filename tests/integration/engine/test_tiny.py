"""The built-in tiny models: deterministic construction, content fingerprint, shapes, tokenizer."""

from __future__ import annotations

import pytest
import torch

from farm.engine import tiny as tiny_module
from farm.engine.components import Components
from farm.engine.tiny import build_builtin, build_tokenizer, fingerprint_components
from farm.profiles import get_profile


def test_build_is_cached_per_process(tiny: Components) -> None:
    assert build_builtin("tiny") is tiny
    assert build_builtin(get_profile("tiny")) is tiny


def test_fresh_build_gives_same_weights_and_fingerprint(tiny: Components) -> None:
    fresh = tiny_module._build(get_profile("tiny"))
    assert fresh.transformer is not tiny.transformer
    assert fresh.weights_fingerprint == tiny.weights_fingerprint
    for name, module in tiny.modules().items():
        other = fresh.modules()[name]
        for (k, a), (k2, b) in zip(module.state_dict().items(), other.state_dict().items(), strict=True):
            assert k == k2 and torch.equal(a, b), f"{name}.{k} differs between builds"


def test_fingerprint_is_content_based(tiny: Components) -> None:
    assert len(tiny.weights_fingerprint) == 64
    modules = tiny.modules()
    assert fingerprint_components(modules, tiny.tokenizer) == tiny.weights_fingerprint
    # one changed weight changes the fingerprint
    changed = tiny_module._build(get_profile("tiny"))
    with torch.no_grad():
        next(changed.transformer_2.parameters()).view(-1)[0] += 1.0
    assert fingerprint_components(changed.modules(), changed.tokenizer) != tiny.weights_fingerprint


def test_build_leaves_global_rng_alone() -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    tiny_module._build(get_profile("tiny-dense"))
    assert torch.equal(torch.rand(3), expected)


def test_experts_differ_and_modules_are_frozen(tiny: Components) -> None:
    a = dict(tiny.transformer.named_parameters())
    b = dict(tiny.transformer_2.named_parameters())
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    for name, module in tiny.modules().items():
        assert not module.training, name
        assert not any(p.requires_grad for p in module.parameters()), name
        assert all(p.device.type == "cpu" for p in module.parameters()), name
    assert tiny.text_encoder.config.d_model == tiny.transformer.config.text_dim == 32
    assert tiny.profile.name == "tiny" and tiny.expand_timesteps is False


def test_dense_is_ti2v_shaped(tiny_dense: Components, tiny: Components) -> None:
    assert tiny_dense.transformer_2 is None
    assert tiny_dense.expand_timesteps is True
    assert tiny_dense.transformer.config.in_channels == tiny_dense.transformer.config.out_channels == 48
    vae = tiny_dense.vae.config
    assert (vae.z_dim, vae.in_channels, vae.patch_size, vae.scale_factor_spatial) == (48, 12, 2, 16)
    assert len(vae.latents_mean) == len(vae.latents_std) == 48
    assert tiny_dense.weights_fingerprint != tiny.weights_fingerprint


def test_tokenizer_specials_and_fallback() -> None:
    tok = build_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok("A cat zzq 色", padding="max_length", max_length=12, truncation=True).input_ids
    assert len(ids) == 12
    vocab = tok.get_vocab()
    assert ids[:2] == [vocab["a"], vocab["cat"]]  # known words, lower-cased
    assert ids[2:5] == [vocab["z"], vocab["##z"], vocab["##q"]]  # character fallback
    assert ids[5] == tok.unk_token_id  # outside the vocabulary
    assert ids[6] == tok.eos_token_id and ids[7:] == [0] * 5  # </s> appended, then padding
    # truncation keeps the </s>
    long = tok(" ".join(["cat"] * 50), max_length=8, truncation=True).input_ids
    assert len(long) == 8 and long[-1] == tok.eos_token_id


def test_non_builtin_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="not a built-in"):
        build_builtin("wan2.2-t2v-a14b")
