import pytest
import torch

from dtmerge.model import DecisionTransformer, DTConfig


def _inputs(cfg, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = cfg.context_len
    return (torch.randn(B, K, cfg.state_dim, generator=g), torch.randn(B, K, cfg.act_dim, generator=g),
            torch.randn(B, K, 1, generator=g), torch.randint(0, 1000, (B, K), generator=g))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return DecisionTransformer(DTConfig(state_dim=11, act_dim=3, n_embd=32, n_layer=2, n_head=2,
                                        context_len=8)).eval()


def test_changing_a_later_token_never_changes_an_earlier_prediction(model):
    s, a, r, t = _inputs(model.config)
    base = model(s, a, r, t)
    for k in range(model.config.context_len):
        s2, a2, r2 = s.clone(), a.clone(), r.clone()
        s2[:, k] += 5.0  # state k affects predictions from step k on
        a2[:, k] += 5.0  # action k is after the state token of step k: it affects steps > k only
        r2[:, k] += 5.0
        out_s, out_a, out_r = model(s2, a, r, t), model(s, a2, r, t), model(s, a, r2, t)
        torch.testing.assert_close(out_s[:, :k], base[:, :k], rtol=0, atol=0)
        torch.testing.assert_close(out_a[:, :k + 1], base[:, :k + 1], rtol=0, atol=0)
        torch.testing.assert_close(out_r[:, :k], base[:, :k], rtol=0, atol=0)
        assert not torch.equal(out_s[:, k], base[:, k])  # and the change is seen where it should be
        assert not torch.equal(out_r[:, k], base[:, k])
        if k + 1 < model.config.context_len:
            assert not torch.equal(out_a[:, k + 1], base[:, k + 1])


def test_padding_is_invisible_to_real_tokens(model):
    s, a, r, t = _inputs(model.config)
    n_pad = 3
    mask = torch.ones(s.shape[:2], dtype=torch.bool)
    mask[:, :n_pad] = False
    out = model(s, a, r, t, mask)
    s2, a2, r2 = s.clone(), a.clone(), r.clone()
    s2[:, :n_pad], a2[:, :n_pad], r2[:, :n_pad] = 100.0, -10.0, 7.0
    out2 = model(s2, a2, r2, t, mask)
    torch.testing.assert_close(out[:, n_pad:], out2[:, n_pad:], rtol=0, atol=1e-6)
    # and the real suffix alone, with no padding at all, gives the same predictions
    short = model(s[:, n_pad:], a[:, n_pad:], r[:, n_pad:], t[:, n_pad:])
    torch.testing.assert_close(short, out[:, n_pad:], rtol=1e-5, atol=1e-6)
    assert torch.isfinite(out).all()


def test_parameter_groups_resolve_to_exact_tensors():
    m = DecisionTransformer(DTConfig(state_dim=17, act_dim=6))
    g = m.parameter_groups()
    assert g["h.1.attn"] == ["transformer.h.1.attn.c_attn.weight", "transformer.h.1.attn.c_attn.bias",
                             "transformer.h.1.attn.c_proj.weight", "transformer.h.1.attn.c_proj.bias"]
    assert g["h.0.ln_1"] == ["transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias"]
    assert g["ln_f"] == ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    assert len(g["attn"]) == 12 and len(g["mlp"]) == 12
    assert "embed_ln.weight" not in g["ln"] and "embed_ln.weight" in g["embed"]
    assert sorted(g["trunk"]) == sorted(n for n, _ in m.named_parameters() if n.startswith("transformer."))
    assert sorted(g["trunk"] + g["embed"] + g["head"]) == sorted(n for n, _ in m.named_parameters())
    sizes = dict(m.named_parameters())
    count = lambda names: sum(sizes[n].numel() for n in names)  # noqa: E731
    assert count(g["trunk"]) == 595_072  # = HF GPT2Model blocks + ln_f at 128/3 layers
    assert round(100 * count(g["attn"]) / count(g["trunk"]), 2) == 33.30  # the paper says "~33.18%" of "596K"


def test_names_and_layouts_match_hugging_face_gpt2():
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=10))
    ours = DecisionTransformer(DTConfig(state_dim=3, act_dim=2, n_embd=32, n_layer=2, n_head=2))
    theirs = {k: v.shape for k, v in hf.state_dict().items() if k.startswith("transformer.h.") or "ln_f" in k}
    mine = {k: v.shape for k, v in ours.state_dict().items() if k.startswith("transformer.")}
    assert {k: v for k, v in theirs.items() if not k.endswith("attn.bias") or "c_attn" in k} == mine


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="not divisible"):
        DTConfig(state_dim=3, act_dim=2, n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="activation"):
        DTConfig(state_dim=3, act_dim=2, activation="geglu")


def test_explicit_attention_equals_sdpa():
    import torch.nn.functional as F

    from dtmerge.model.gpt import explicit_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 12, 8, generator=g) for _ in range(3))
    mask = torch.ones(12, 12, dtype=torch.bool).tril() & (torch.rand(2, 1, 12, 12, generator=g) > 0.3)
    mask |= torch.eye(12, dtype=torch.bool)
    torch.testing.assert_close(explicit_attention(q, k, v, mask, 0.0, False),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_last_only_equals_the_last_full_prediction(model):
    s, a, r, t = _inputs(model.config)
    mask = torch.ones(s.shape[:2], dtype=torch.bool)
    mask[0, :2] = False
    full = model(s, a, r, t, mask)
    last = model(s, a, r, t, mask, last_only=True)
    assert last.shape == (3, 1, 3)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-6)


def test_dropout_drops_p_and_keeps_the_mean():
    from dtmerge.model.gpt import dropout
    from dtmerge.runtime import seed_everything

    seed_everything(0)
    x = torch.ones(200_000)
    y = dropout(x, 0.1, True)
    assert abs((y == 0).float().mean().item() - 0.1) < 0.003
    assert abs(y.mean().item() - 1.0) < 0.01 and torch.equal(dropout(x, 0.1, False), x)
    seed_everything(0)
    assert torch.equal(dropout(x, 0.1, True), y)  # seeded
