"""GPT-2 initialisation: weights saved by transformers load into the trunk and compute the same."""

import json

import pytest
import torch

from dtmerge.checkpoint import CheckpointError
from dtmerge.lm import dt_from_gpt2

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    path = tmp_path_factory.mktemp("lm") / "tiny-gpt2"
    model.save_pretrained(path)
    return path, model


def test_trunk_gives_the_same_hidden_states_as_transformers(gpt2_dir):
    path, hf = gpt2_dir
    dt = dt_from_gpt2(path, state_dim=5, act_dim=2, max_ep_len=100).eval()
    x = torch.randn(3, 12, 32)
    pos = torch.arange(12)
    # DT feeds no positions inside the trunk: give transformers inputs with its wpe taken out again
    theirs = hf.transformer(inputs_embeds=x - hf.transformer.wpe(pos), position_ids=pos[None].expand(3, -1))
    torch.testing.assert_close(dt.transformer(x), theirs.last_hidden_state, rtol=1e-4, atol=1e-5)
    # the position embedding becomes the timestep embedding, tiled past its 64 rows
    wpe = hf.transformer.wpe.weight
    assert torch.equal(dt.embed_timestep.weight[:64], wpe) and torch.equal(dt.embed_timestep.weight[64:100], wpe[:36])
    assert dt.config.activation == "gelu_new" and dt.config.n_layer == 2


def test_gpt2_errors_name_the_file(tmp_path, gpt2_dir):
    path, _ = gpt2_dir
    with pytest.raises(CheckpointError, match="not a local directory, and fetching it from the Hugging Face hub"):
        dt_from_gpt2(tmp_path / "no-such-model", 5, 2)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**json.loads((path / "config.json").read_text()),
                                                 "scale_attn_by_inverse_layer_idx": True}))
    with pytest.raises(CheckpointError, match="scale_attn_by_inverse_layer_idx=True is not supported"):
        dt_from_gpt2(bad, 5, 2)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((path / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="pytorch_model.bin \\(a pickle\\)"):
        dt_from_gpt2(pickled, 5, 2)


def test_training_from_a_gpt2_init(tmp_path, gpt2_dir, hopper_file):
    from dtmerge.checkpoint import load_checkpoint
    from dtmerge.train import TrainConfig, train

    path, hf = gpt2_dir
    ckpt = train(TrainConfig(dataset=str(hopper_file), out=str(tmp_path / "run"), init=str(path), steps=2,
                             warmup_steps=1, eval_episodes=0, device="cpu", precision="fp32"), progress=False)
    model, meta = load_checkpoint(ckpt)
    assert meta["init_kind"] == "gpt2" and model.config.n_embd == 32 and model.config.activation == "gelu_new"
    moved = model.transformer.h[0].mlp.c_fc.weight - hf.transformer.h[0].mlp.c_fc.weight
    assert 0 < moved.abs().max() < 1e-2  # trained from the LM's weights, not from scratch
