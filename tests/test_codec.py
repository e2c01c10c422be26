"""The decoder-only X-Codec2: exactness against the xcodec2 package, strict loading, batched decoding."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tts.codec import XCodec2Config, XCodec2Decoder
from tts.constants import SAMPLES_PER_CODE
from tts.tiny import build_tiny_codec

SMALL = dict(hidden_dim=128, depth=2, heads=4, pos_meb_dim=32, vq_dim=64)


@pytest.fixture(scope="module")
def tiny_codec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_codec(tmp_path_factory.mktemp("codec"), seed=3)


@pytest.fixture(scope="module")
def tiny_codec(tiny_codec_dir: Path) -> XCodec2Decoder:
    return XCodec2Decoder.from_pretrained(tiny_codec_dir)


def _import_reference(monkeypatch: pytest.MonkeyPatch) -> tuple[type, type]:
    """The package's decoder classes. xcodec2 imports torchaudio without using it, and no torchaudio exists for
    this torch: a stub module stands in during this test only (transformers decides first that it is absent)."""
    pytest.importorskip("transformers")
    import transformers.utils

    transformers.utils.is_torchaudio_available()
    try:
        import torchaudio  # noqa: F401
    except ImportError:
        monkeypatch.setitem(sys.modules, "torchaudio", types.ModuleType("torchaudio"))
    try:
        from xcodec2.modeling_xcodec2 import XCodec2Model
        from xcodec2.vq.codec_decoder_vocos import CodecDecoderVocos
    except ImportError as e:
        pytest.skip(f"xcodec2 0.1.5 is not importable ({e}); `make install` installs it with --no-deps")
    return XCodec2Model, CodecDecoderVocos


def _restore_trained_fsq_grid(quantizer: torch.nn.Module) -> None:
    """X-Codec2 was trained with vector-quantize-pytorch 1.17.8, whose 4-level grid is (d - 2)/2. Newer releases
    build ResidualFSQ with preserve_symmetry=True ({-1, -1/3, 1/3, 1}); put the trained grid back in the package's
    reference so the comparison is against the model as trained (verified once against 1.17.8 itself)."""
    layer = quantizer.layers[0]
    digits = (torch.arange(layer.codebook_size)[:, None] // layer._basis) % layer._levels
    layer.implicit_codebook = ((digits - 2) / 2).float()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchao, imported by torchtune
def test_matches_xcodec2_package_on_same_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    XCodec2Model, CodecDecoderVocos = _import_reference(monkeypatch)
    torch.manual_seed(0)
    generator = CodecDecoderVocos(**SMALL).eval()
    fc_post_a = torch.nn.Linear(SMALL["vq_dim"], SMALL["hidden_dim"])
    with torch.no_grad():  # move every weight off its init value (norm weights 1, biases 0) so all are exercised
        for p in [*generator.parameters(), *fc_post_a.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    _restore_trained_fsq_grid(generator.quantizer)

    state = {f"generator.{k}": v for k, v in generator.state_dict().items()}
    state |= {f"fc_post_a.{k}": v for k, v in fc_post_a.state_dict().items()}
    state["semantic_model.feature_projection.weight"] = torch.randn(3, 3)  # non-decoder keys are dropped
    state["CodecEnc.conv_blocks.0.weight"] = torch.randn(2, 1, 7)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"decoder": SMALL}))
    ours = XCodec2Decoder.from_pretrained(tmp_path)

    codes = torch.randint(0, 65536, (2, 41), generator=torch.Generator().manual_seed(1))
    ref_self = types.SimpleNamespace(generator=generator, fc_post_a=fc_post_a)  # decode_code reads only these
    expected = XCodec2Model.decode_code(ref_self, codes.unsqueeze(1))  # [B, 1, T·320]
    got = ours.decode(codes)
    assert expected.shape == (2, 1, 41 * SAMPLES_PER_CODE)
    assert got.shape == (2, 41 * SAMPLES_PER_CODE)
    assert expected.std() > 1e-3  # a real waveform, not a saturated or silent one
    torch.testing.assert_close(got, expected[:, 0], atol=1e-5, rtol=1e-5)


def test_fsq_grid_is_the_trained_one(tiny_codec: XCodec2Decoder) -> None:
    z = tiny_codec.generator.quantizer.grid(torch.tensor([0, 1, 3, 4, 2 * 4**7, 65535]))
    assert z[0].tolist() == [-1.0] * 8
    assert z[1].tolist() == [-0.5] + [-1.0] * 7  # first level is the least significant digit
    assert z[2].tolist() == [0.5] + [-1.0] * 7
    assert z[3].tolist() == [-1.0, -0.5] + [-1.0] * 6
    assert z[4].tolist() == [-1.0] * 7 + [0.0]
    assert z[5].tolist() == [0.5] * 8


def test_loading_keeps_only_decoder_weights(tiny_codec_dir: Path, tiny_codec: XCodec2Decoder) -> None:
    on_disk = load_file(str(tiny_codec_dir / "model.safetensors"))
    non_decoder = {k for k in on_disk if not k.startswith(("generator.", "fc_post_a."))}
    assert non_decoder  # the tiny checkpoint carries encoder-side keys like the real one
    loaded = tiny_codec.state_dict()
    assert set(loaded) == set(on_disk) - non_decoder
    for k, v in loaded.items():
        assert torch.equal(v, on_disk[k]), k
    assert tiny_codec.config == XCodec2Config(hidden_dim=128, depth=2, heads=4, pos_meb_dim=32, vq_dim=256)


def test_torch_checkpoint_loads_the_same(tiny_codec_dir: Path, tiny_codec: XCodec2Decoder, tmp_path: Path) -> None:
    torch.save(load_file(str(tiny_codec_dir / "model.safetensors")), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((tiny_codec_dir / "config.json").read_text())
    codes = torch.randint(0, 65536, (1, 9))
    assert torch.equal(XCodec2Decoder.from_pretrained(tmp_path).decode(codes), tiny_codec.decode(codes))
    # a pre-zip torch file cannot be memory-mapped: it still loads (without mmap), and is not blamed on weights_only
    state = load_file(str(tiny_codec_dir / "model.safetensors"))
    torch.save(state, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert torch.equal(XCodec2Decoder.from_pretrained(tmp_path).decode(codes), tiny_codec.decode(codes))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: not a readable torch checkpoint"):
        XCodec2Decoder.from_pretrained(tmp_path)
    torch.save({**state, "meta": ValueError("x")}, tmp_path / "pytorch_model.bin")
    with pytest.raises(
        ValueError, match=r"holds an object besides tensors \(exceptions\.ValueError\).*weights_only=True"
    ):
        XCodec2Decoder.from_pretrained(tmp_path)


def test_strict_key_checking_names_the_keys(tiny_codec_dir: Path, tmp_path: Path) -> None:
    state = load_file(str(tiny_codec_dir / "model.safetensors"))
    config = (tiny_codec_dir / "config.json").read_text()
    missing = dict(state)
    del missing["generator.head.out.weight"]
    (tmp_path / "a").mkdir()
    save_file(missing, str(tmp_path / "a" / "model.safetensors"))
    (tmp_path / "a" / "config.json").write_text(config)
    with pytest.raises(ValueError, match=r"missing \['generator\.head\.out\.weight'\]"):
        XCodec2Decoder.from_pretrained(tmp_path / "a")

    extra = dict(state, **{"generator.backbone.extra.weight": torch.zeros(2)})
    (tmp_path / "b").mkdir()
    save_file(extra, str(tmp_path / "b" / "model.safetensors"))
    (tmp_path / "b" / "config.json").write_text(config)
    with pytest.raises(ValueError, match=r"unexpected \['generator\.backbone\.extra\.weight'\]"):
        XCodec2Decoder.from_pretrained(tmp_path / "b")

    (tmp_path / "c").mkdir()  # without its config.json the real model's sizes apply: 12 layers expected
    save_file(state, str(tmp_path / "c" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['generator\.backbone\.transformers\.10\..*config\.json"):
        XCodec2Decoder.from_pretrained(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text(config.replace('"vq_dim": 256', '"vq_dim": 64'))
    with pytest.raises(
        ValueError, match=r"project_in\.weight has shape \(8, 256\) in model\.safetensors.*expects \(8, 64\)"
    ):
        XCodec2Decoder.from_pretrained(tmp_path / "c")


def test_missing_checkpoint_names_the_config_key(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"codec\.path=.*none of \['model\.safetensors'"):
        XCodec2Decoder.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"codec\.path='\./no/such/folder'"):
        XCodec2Decoder.from_pretrained("./no/such/folder")


def test_decode_batch_uneven_lengths(tiny_codec: XCodec2Decoder) -> None:
    rng = np.random.default_rng(0)
    lengths = [13, 0, 5, 13, 1, 30]
    codes = [rng.integers(0, 65536, n) for n in lengths]
    for exact in (True, False):
        wavs = tiny_codec.decode_batch(codes, batch_size=4, exact=exact)
        assert [w.shape[0] for w in wavs] == [SAMPLES_PER_CODE * n for n in lengths]
        assert all(w.dtype == np.float32 for w in wavs)
        assert wavs[1].size == 0
    exact_wavs = tiny_codec.decode_batch(codes, batch_size=4, exact=True)
    for c, w in zip(codes, exact_wavs, strict=True):
        if c.size:
            alone = tiny_codec.decode(torch.from_numpy(c)[None])[0].numpy()
            np.testing.assert_allclose(w, alone, atol=1e-6)
    assert not np.allclose(exact_wavs[0], exact_wavs[3])  # different codes of equal length stay apart


def test_codes_out_of_range_are_named(tiny_codec: XCodec2Decoder) -> None:
    with pytest.raises(ValueError, match=r"codes\[1\]\[2\]=65536 is outside \[0, 65535\]"):
        tiny_codec.decode_batch([np.array([1, 2]), np.array([0, 1, 65536])])
    with pytest.raises(ValueError, match=r"codes\[0\]\[0\]=-1"):
        tiny_codec.decode_batch([np.array([-1, 2])])
    with pytest.raises(ValueError, match=r"code -1 at \[0, 1\]"):
        tiny_codec.decode(torch.tensor([[3, -1]]))
    assert tiny_codec.decode_batch([]) == []
