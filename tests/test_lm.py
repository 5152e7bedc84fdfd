"""GPT-2 initialisation: weights saved by transformers load into the trunk and compute the same."""

import json

import numpy as np
import pytest
import torch

from dtmerge.lm import dt_from_gpt2
from dtmerge.store.checkpoint import CheckpointError

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
    from dtmerge.store.checkpoint import load_checkpoint
    from dtmerge.train import TrainConfig, train

    path, hf = gpt2_dir
    ckpt = train(TrainConfig(dataset=str(hopper_file), out=str(tmp_path / "run"), init=str(path), steps=2,
                             warmup_steps=1, device="cpu", precision="fp32"), progress=False)
    model, meta = load_checkpoint(ckpt)
    assert meta["init_kind"] == "gpt2" and model.config.n_embd == 32 and model.config.activation == "gelu_new"
    moved = model.transformer.h[0].mlp.c_fc.weight - hf.transformer.h[0].mlp.c_fc.weight
    assert 0 < moved.abs().max() < 1e-2  # trained from the LM's weights, not from scratch


def test_cos_loss_on_hand_made_vectors():
    from dtmerge.lm.objectives import cos_to_centres_loss

    e = torch.tensor([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    c = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # cos maxima: e1 -> 1 (c1), e2 -> 1/sqrt(2) (c2), e3 -> 1 (c2)
    expected = -(1.0 + 2 ** -0.5 + 1.0) / 3
    torch.testing.assert_close(cos_to_centres_loss(e, c), torch.tensor(expected))
    only_e2 = torch.tensor([False, True, False])
    torch.testing.assert_close(cos_to_centres_loss(e, c, only_e2), torch.tensor(-(2 ** -0.5)))
    # a per-dimension maximum (the original's) would give something else here
    per_dim = -(torch.einsum("ij,cj->icj", e, c).max(1).values.mean())
    assert not torch.isclose(per_dim, torch.tensor(expected))


def test_schedule_and_l2_have_known_values():
    from dtmerge.lm.objectives import l2_to_reference, sigmoid_decay

    assert sigmoid_decay(0) == pytest.approx(0.9933, abs=1e-4)
    assert sigmoid_decay(2500) == pytest.approx(0.5)
    assert sigmoid_decay(5000) == pytest.approx(0.0067, abs=1e-4)
    ref = {"a": torch.zeros(2, 2), "b": torch.zeros(3)}
    params = {"a": torch.ones(2, 2), "b": torch.full((3,), 2.0)}
    assert l2_to_reference(ref, ref).item() == 0.0
    assert l2_to_reference(params, ref, "fro").item() == pytest.approx(2.0 + 12 ** 0.5)
    assert l2_to_reference(params, ref, "squared").item() == pytest.approx(4.0 + 12.0)


def test_token_centres_are_cached_and_normalised(tmp_path, gpt2_dir, monkeypatch):
    import shutil

    from dtmerge.lm.objectives import token_centres

    monkeypatch.setenv("DTMERGE_HOME", str(tmp_path / "home"))
    path = tmp_path / "lm"
    shutil.copytree(gpt2_dir[0], path)
    before = sorted(p.name for p in path.iterdir())
    c = token_centres(path, clusters=5, seed=0)
    assert c.shape == (5, 32) and torch.allclose(c.norm(dim=-1), torch.ones(5))
    assert len(list((tmp_path / "home" / "kmeans").glob("*-5-seed0.safetensors"))) == 1
    assert sorted(p.name for p in path.iterdir()) == before  # nothing written into the LM's directory
    assert torch.equal(token_centres(path, clusters=5, seed=0), c)


def test_eq5_terms_in_training(tmp_path, gpt2_dir, hopper_file):
    import shutil

    from dtmerge.train import TrainConfig, train

    path = tmp_path / "lm"
    shutil.copytree(gpt2_dir[0], path)
    base = dict(dataset=str(hopper_file), steps=3, warmup_steps=1, log_every=1, device="cpu",
                precision="fp32", cos_clusters=5)
    train(TrainConfig(**base, out=str(tmp_path / "r"), init=str(path), cos_weight=0.1, l2_weight=1e-2),
          progress=False)
    recs = [json.loads(line) for line in open(tmp_path / "r" / "metrics.jsonl")]
    assert all(r["loss"] == pytest.approx(r["mse"] + r["loss_cos"] + r["loss_l2"], rel=1e-5) for r in recs)
    assert all(-0.1 <= r["loss_cos"] < 0 for r in recs)  # minus a weighted cosine
    assert recs[0]["loss_l2"] < recs[-1]["loss_l2"]  # the trunk moves away from the LM as it trains
    with pytest.raises(ValueError, match="need a language-model init"):
        train(TrainConfig(**base, out=str(tmp_path / "x"), cos_weight=0.1), progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import random

    rng = random.Random(0)
    words = "the hopper jumps over a walker while the cheetah runs fast and far across the plain".split()
    text = "\n".join(" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(400))
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(text)
    return path


def _pretrain_cfg(corpus, out, steps):
    from dtmerge.lm.pretrain import PretrainConfig

    return PretrainConfig(corpus=[str(corpus)], out=str(out), tokenizer="bpe", vocab_size=300, n_embd=16,
                          n_layer=2, n_head=2, n_positions=64, seq_len=16, batch_size=4, steps=steps, lr=3e-3,
                          warmup_steps=2, log_every=1, save_every=3, device="cpu", precision="fp32")


def test_pretrained_lm_learns_and_initialises_a_dt(tmp_path, corpus):
    from dtmerge.lm.pretrain import pretrain

    model_dir = pretrain(_pretrain_cfg(corpus, tmp_path / "lm", 40), progress=False)
    loss = [json.loads(line)["loss"] for line in open(tmp_path / "lm" / "metrics.jsonl")]
    assert sum(loss[-5:]) / 5 < 0.6 * sum(loss[:3]) / 3
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()
    dt = dt_from_gpt2(model_dir, state_dim=11, act_dim=3)
    assert dt.config.n_embd == 16 and dt.embed_timestep.weight.shape == (1000, 16)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    assert tok.decode(tok("the hopper jumps")["input_ids"]) == "the hopper jumps"


def test_pretraining_resumes_to_the_same_weights(tmp_path, corpus):
    from safetensors.torch import load_file

    from dtmerge.lm.pretrain import pretrain

    a = pretrain(_pretrain_cfg(corpus, tmp_path / "a", 6), progress=False)
    pretrain(_pretrain_cfg(corpus, tmp_path / "b", 3), progress=False)
    b = pretrain(_pretrain_cfg(corpus, tmp_path / "b", 6), resume=True, progress=False)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_lm_term_equals_the_lms_own_loss_at_the_start(tmp_path, corpus):
    """Through the DT's trunk, with the LM's token and position embeddings, L_LM is the LM's loss."""
    from dtmerge.lm.objectives import LMCoTraining
    from dtmerge.lm.pretrain import pretrain

    lm_dir = pretrain(_pretrain_cfg(corpus, tmp_path / "lm", 5), progress=False)
    dt = dt_from_gpt2(lm_dir, state_dim=11, act_dim=3).eval()
    co = LMCoTraining(lm_dir, [str(corpus)], seq_len=16, batch_size=3, seed=0, device="cpu")
    ours = co.loss(dt)
    starts = np.random.default_rng(0).integers(0, len(co.tokens) - 16, size=3)
    ids = torch.from_numpy(co.tokens[starts[:, None] + np.arange(16)])
    hf = transformers.GPT2LMHeadModel.from_pretrained(lm_dir).eval()
    torch.testing.assert_close(ours, hf(input_ids=ids, labels=ids).loss, rtol=1e-4, atol=1e-5)


def test_presets_fill_unset_weights(hopper_file):
    from dtmerge.train import TrainConfig

    cfg = TrainConfig(dataset=str(hopper_file), preset="chibit-r")
    assert (cfg.cos_weight, cfg.cos_until, cfg.l2_weight, cfg.lm_weight) == (0.1, 5000, 1e-4, 0.0)
    assert TrainConfig(dataset=str(hopper_file), preset="chibit-co").lm_weight == 1.0
    assert TrainConfig(dataset=str(hopper_file), preset="chibit", cos_weight=0.5).cos_weight == 0.5  # flags win
    with pytest.raises(ValueError):
        TrainConfig(dataset=str(hopper_file), preset="chibit-xyz")


def test_co_training_runs_and_resumes(tmp_path, corpus, hopper_file):
    from safetensors.torch import load_file

    from dtmerge.lm.pretrain import pretrain
    from dtmerge.train import TrainConfig, train

    lm_dir = pretrain(_pretrain_cfg(corpus, tmp_path / "lm", 5), progress=False)
    base = dict(dataset=str(hopper_file), init=str(lm_dir), preset="chibit-co", lm_corpus=[str(corpus)],
                lm_seq_len=16, cos_clusters=5, steps=4, save_every=2, warmup_steps=1, log_every=1,
                device="cpu", precision="fp32")
    a = train(TrainConfig(**base, out=str(tmp_path / "a")), progress=False)
    rec = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    assert all(r["loss_lm"] > 0 and "loss_cos" in r for r in rec)
    train(TrainConfig(**{**base, "steps": 2}, out=str(tmp_path / "b")), progress=False)
    b = train(TrainConfig(**base, out=str(tmp_path / "b")), resume=True, progress=False)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # an L_LM block longer than the timestep embedding that positions it (the original's 1024 > 1000)
    with pytest.raises(ValueError, match="lm_seq_len 1024 exceeds the 1000 rows"):
        train(TrainConfig(**{**base, "lm_seq_len": 1024}, out=str(tmp_path / "c")), progress=False)
    assert not (tmp_path / "c").exists()


def test_no_corpus_and_no_wikitext_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    from dtmerge.lm.pretrain import PretrainConfig, pretrain

    monkeypatch.setitem(sys.modules, "datasets", None)  # as on a machine without `datasets` or network
    with pytest.raises(FileNotFoundError, match="no --corpus given and Wikitext-103 could not be loaded"):
        pretrain(PretrainConfig(out=str(tmp_path / "lm"), steps=1), progress=False)
