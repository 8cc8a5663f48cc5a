"""The fast GPT-Neo computes transformers' GPTNeoForCausalLM function; export/import round-trips."""

import json

import pytest
import torch

from tinystories.errors import UserError
from tinystories.train.model import (
    PRESETS,
    FastGPTNeo,
    Shape,
    count_params,
    load_hf,
    param_groups,
    resolve_shape,
    save_hf,
    shape_from_hf_config,
    hf_config,
    train_flops_per_token,
)

# Global and local layers, a window (5) far shorter than the sequence (24), an odd layer count.
SHAPE = Shape(hidden_size=32, num_layers=3, num_heads=4, window_size=5, max_position=40)
VOCAB = 101


def _perturbed_model(shape=SHAPE, vocab=VOCAB, seed=0):
    torch.manual_seed(seed)
    model = FastGPTNeo(shape, vocab)
    # Away from the init (ones/zeros in norms, zero biases) so every parameter matters.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def test_logits_match_transformers_gpt_neo(tmp_path):
    from transformers import GPTNeoForCausalLM

    model = _perturbed_model()
    save_hf(model, tmp_path / "ckpt", eos_token_id=0)
    hf = GPTNeoForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert hf.config.attention_layers == ["global", "local", "global"]
    assert hf.config.window_size == 5
    x = torch.randint(0, VOCAB, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x)
        theirs = hf(x).logits
    assert ours.shape == theirs.shape == (3, 24, VOCAB)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    # The local window really matters here: an all-global model gives other logits.
    glob = FastGPTNeo(Shape(**{**SHAPE.to_dict(), "attention": "global"}), VOCAB).eval()
    glob.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (glob(x) - ours).abs().max() > 1e-3
    # Same loss as transformers (labels shifted inside, -100 ignored).
    labels = x.clone()
    labels[:, :5] = -100
    with torch.no_grad():
        torch.testing.assert_close(model(x, labels=labels), hf(x, labels=labels).loss, atol=1e-5, rtol=1e-5)


def test_logits_match_across_attention_chunks(tmp_path):
    """Sequences longer than the CPU attention chunk (256 rows): the chunk borders, global
    layers' later chunks and windows reaching back across a border all match transformers."""
    from transformers import GPTNeoForCausalLM

    from tinystories.train.model import ATTN_CHUNK

    shape = Shape(hidden_size=32, num_layers=2, num_heads=4, window_size=100, max_position=640)
    model = _perturbed_model(shape)
    save_hf(model, tmp_path / "ckpt")
    hf = GPTNeoForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    x = torch.randint(0, VOCAB, (1, 2 * ATTN_CHUNK + 77), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=1e-4)


def test_gradients_match_transformers(tmp_path):
    from transformers import GPTNeoForCausalLM

    model = _perturbed_model().train()
    save_hf(model, tmp_path / "ckpt")
    hf = GPTNeoForCausalLM.from_pretrained(tmp_path / "ckpt").train()
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))
    model(x, labels=x).backward()
    hf(x, labels=x).loss.backward()
    ours = model.h[1].qkv.weight.grad.chunk(3)[0]
    theirs = hf.transformer.h[1].attn.attention.q_proj.weight.grad
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.wte.weight.grad, hf.transformer.wte.weight.grad, atol=1e-5, rtol=1e-4)


def test_export_load_round_trip_and_files(tmp_path):
    model = _perturbed_model()
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_text("{}")
    save_hf(model, tmp_path / "ckpt", tokenizer_dir=tok_dir, eos_token_id=3, extra={"note": 1})
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tinystories.json"} <= files
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["model_type"] == "gpt_neo" and config["hidden_size"] == 32 and config["eos_token_id"] == 3
    back = load_hf(tmp_path / "ckpt")
    assert back.shape == SHAPE
    for (k, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(back.state_dict().items())):
        assert torch.equal(a, b), k


def test_presets_are_the_paper_shapes():
    assert set(PRESETS) == {"1M", "3M", "8M", "28M", "33M"}
    widths = {name: resolve_shape(name).hidden_size for name in PRESETS}
    assert widths == {"1M": 64, "3M": 128, "8M": 256, "28M": 512, "33M": 768}
    assert resolve_shape("33M").num_layers == 4 and resolve_shape("8M").num_layers == 8
    for name in PRESETS:
        s = resolve_shape(name)
        assert s.num_heads == 16 and s.window_size == 256 and s.attention_layers[:2] == ["global", "local"]
        # HF config round trip keeps the shape.
        assert shape_from_hf_config(hf_config(s, 10000)) == s
    # count_params agrees with the module (one real build of a small preset).
    model = FastGPTNeo(resolve_shape("1M"), 1000)
    assert count_params(resolve_shape("1M"), 1000)["params"] == sum(p.numel() for p in model.parameters())


def test_unknown_size_and_bad_custom_shape():
    with pytest.raises(UserError, match="unknown size 'huge'"):
        resolve_shape("huge")
    with pytest.raises(UserError, match="not divisible"):
        resolve_shape("odd", {"odd": {"hidden_size": 30, "num_heads": 4}})
    with pytest.raises(UserError, match="unknown field"):
        resolve_shape("x", {"x": {"width": 3}})


def test_bf16_autocast_close_to_fp32():
    model = _perturbed_model()
    x = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        ref = model(x, labels=x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, labels=x)
    assert abs(ref.item() - low.item()) < 0.05 * ref.item()


def test_weight_decay_groups_skip_norms_biases_embeddings():
    model = FastGPTNeo(SHAPE, VOCAB)
    decay, no_decay = param_groups(model, 0.1)
    ids = {id(p) for p in decay["params"]}
    assert id(model.h[0].qkv.weight) in ids and id(model.h[0].c_fc.weight) in ids
    for p in (model.wte.weight, model.wpe.weight, model.h[0].ln_1.weight, model.h[0].c_fc.bias, model.ln_f.bias):
        assert id(p) not in ids
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_flops_formula():
    s = resolve_shape("33M")
    f = train_flops_per_token(s, 10000, 512)
    n_matmul = 4 * (4 * 768 * 768 + 2 * 768 * 3072) + 10000 * 768
    assert 6 * n_matmul < f < 6 * n_matmul * 1.2


def test_compile_failure_falls_back_to_eager(monkeypatch, caplog):
    from tinystories.train.trainer import compile_model

    model = FastGPTNeo(SHAPE, VOCAB)

    class Source:
        def batch(self, step, micro, rank, world):
            x = torch.randint(0, VOCAB, (2, 8))
            return x, x

    def broken_compile(*a, **k):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level("WARNING"):
        out = compile_model(model, "fp32", torch.device("cpu"), Source(), 0, 1)
    assert out is model
    assert "torch.compile failed" in caplog.text and "training eagerly" in caplog.text
    assert all(p.grad is None for p in model.parameters())


# -- the GPU branches, run on a CPU ----------------------------------------------------------------


@pytest.mark.parametrize("window", [None, 1, 5, 100, 300], ids=["global", "w1", "w5", "w100", "w300"])
def test_fused_gpu_attention_matches_the_chunked_cpu_attention(window):
    """The single-call attention GPUs run (is_causal, or the banded local mask) computes what
    the chunked CPU path computes, over a sequence longer than one CPU chunk."""
    from tinystories.train.model import ATTN_CHUNK, chunked_attention, fused_attention

    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 3, ATTN_CHUNK + 57, 8, generator=g) for _ in range(3))
    torch.testing.assert_close(fused_attention(q, k, v, window), chunked_attention(q, k, v, window), atol=1e-5, rtol=1e-5)


def test_band_mask_is_causal_and_windowed():
    from tinystories.train.model import band_mask

    mask = band_mask(0, 6, 0, 6, 3, "cpu")
    assert mask.tolist()[4] == [False, False, True, True, True, False]  # the last 3 positions, self included
    assert band_mask(0, 4, 0, 4, None, "cpu").tolist() == torch.ones(4, 4, dtype=torch.bool).tril().tolist()
    assert band_mask(4, 6, 2, 6, 3, "cpu").tolist() == mask[4:6, 2:6].tolist()  # a chunk is a slice of the square


def test_fast_model_on_the_gpu_branch_matches_transformers(tmp_path, monkeypatch):
    """The whole model through the GPU attention branch (forced on this CPU) still computes
    transformers' function, local layers included."""
    from transformers import GPTNeoForCausalLM

    from tinystories.train import model as model_module

    model = _perturbed_model()
    save_hf(model, tmp_path / "ckpt")
    hf = GPTNeoForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    calls = []

    def gpu_branch(q, k, v, window):
        calls.append(window)
        return model_module.fused_attention(q, k, v, window)

    monkeypatch.setattr(model_module, "causal_attention", gpu_branch)
    x = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=1e-4)
    assert calls == [None, SHAPE.window_size, None], calls


def test_hardware_choices():
    from tinystories.train.hardware import adamw_implementation, autocast_context, choose_dtype

    assert choose_dtype("auto", bf16_supported=True) == "bf16"
    assert choose_dtype("auto", bf16_supported=False) == "fp32"
    assert choose_dtype("fp32", bf16_supported=True) == "fp32"
    assert adamw_implementation("cuda") == {"fused": True}
    assert adamw_implementation("cpu") == {"fused": True}
    assert adamw_implementation("mps") == {"foreach": True}
    with autocast_context("bf16", "cpu")():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast_context("fp32", "cuda")():
        assert not torch.is_autocast_enabled("cuda")


def test_make_optimizer_falls_back_without_a_fused_kernel(monkeypatch):
    from tinystories.train import hardware
    from tinystories.train.args import TrainArgs

    model = FastGPTNeo(SHAPE, VOCAB)
    assert hardware.make_optimizer(model, TrainArgs(), "cpu").defaults["fused"] is True
    # A device PyTorch has no fused AdamW for (a GPU branch here): the foreach kernel instead.
    monkeypatch.setattr(hardware, "adamw_implementation", lambda device_type: {"fused": True, "bogus_option": 1})
    opt = hardware.make_optimizer(model, TrainArgs(), "cuda")
    assert opt.defaults["foreach"] is True and not opt.defaults.get("fused")


# -- external checkpoints ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [("activation_function", "gelu"), ("layer_norm_epsilon", 1e-6), ("resid_dropout", 0.1), ("embed_dropout", 0.1), ("attention_dropout", 0.1)],
)
def test_load_hf_refuses_a_gpt_neo_it_would_compute_differently(tmp_path, field, value):
    """Another activation, norm epsilon or dropout is another function (or training recipe):
    loading it into FastGPTNeo would silently compute and re-export something else."""
    model = _perturbed_model()
    save_hf(model, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    config = json.loads(path.read_text())
    config[field] = value
    path.write_text(json.dumps(config))
    with pytest.raises(UserError) as err:
        load_hf(tmp_path / "ckpt")
    message = str(err.value)
    assert "\n" not in message, f"not one line: {message}"
    assert field in message, f"does not name {field}: {message}"
    assert repr(value) in message, f"does not name the value {value!r}: {message}"
