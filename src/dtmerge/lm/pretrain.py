"""Pre-train a small GPT-2 language model (ChibiT's shape by default: 128 wide, 3 layers, 1 head)
on text, saved in Hugging Face format so `dtmerge train --init DIR` can start a DT from it.

Tokenizer: GPT-2's when it is on this machine (or named as a directory / hub id), otherwise a
byte-level BPE trained on the corpus with `tokenizers`. The corpus is any local text files, by
default Wikitext-103 (what the paper's ChibiT used) where `datasets` can fetch it. Training samples
random `seq_len` blocks of the concatenated token stream; every `save_every` steps the model goes
to `<out>/model` (HF format) and a resumable state (optimizer, RNGs) to `<out>/state`.
"""

from __future__ import annotations

import ast
import json
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from tqdm.auto import tqdm

from dtmerge.atomic import atomic_dir, atomic_path, write_json
from dtmerge.loggers import Loggers
from dtmerge.outputs import claim_outputs, run_directory
from dtmerge.runtime import (
    MAX_BATCH,
    RunConfig,
    autocast,
    check_same_runtime,
    make_deterministic,
    pick_device,
    resolve_precision,
    rng_states,
    runtime_kind,
    seed_everything,
    set_rng_states,
)
from dtmerge.store.checkpoint import load_train_state, write_train_state

EOS = "<|endoftext|>"


class PretrainConfig(RunConfig):
    corpus: list[str] = Field(default_factory=list, description="text files to train on (default: Wikitext-103 "
                                                                "through the `datasets` library, where reachable)")
    out: str = Field("runs/chibit", description="run directory (model/ in HF format, state/, metrics.jsonl)")
    tokenizer: str = Field("auto", description="auto (GPT-2's if in the local Hugging Face cache, else a "
                                               "BPE trained on the corpus), bpe, or a tokenizer directory / hub id")
    vocab_size: int = Field(8000, gt=256, description="vocabulary of a locally trained BPE")
    n_embd: int = Field(128, gt=0, description="embedding width (ChibiT: 128)")
    n_layer: int = Field(3, gt=0, description="transformer blocks (ChibiT: 3)")
    n_head: int = Field(1, gt=0, description="attention heads (ChibiT: 1)")
    n_positions: int = Field(1024, gt=0, description="position embeddings (also the DT's timestep table)")
    seq_len: int = Field(256, gt=1, description="tokens per training block")
    batch_size: int = Field(16, gt=0, le=MAX_BATCH, description="blocks per step")
    steps: int = Field(10000, gt=0, description="optimizer steps in total")
    lr: float = Field(3e-4, gt=0, description="AdamW learning rate after warmup")
    warmup_steps: int = Field(500, gt=0, description="linear warmup steps")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, gt=0, description="gradient norm clip")


def load_or_train_tokenizer(cfg: PretrainConfig, out: Path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if cfg.tokenizer == "auto":  # GPT-2's if it is already on this machine (no network wait), else BPE
        try:
            return AutoTokenizer.from_pretrained("gpt2", local_files_only=True)
        except OSError:
            pass
    elif cfg.tokenizer != "bpe":
        return AutoTokenizer.from_pretrained(cfg.tokenizer)
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train([str(p) for p in cfg.corpus], vocab_size=cfg.vocab_size, min_frequency=2, special_tokens=[EOS],
              show_progress=False)
    out.mkdir(parents=True, exist_ok=True)
    bpe.save(str(out / "bpe-tokenizer.json"))
    return PreTrainedTokenizerFast(tokenizer_file=str(out / "bpe-tokenizer.json"), eos_token=EOS, bos_token=EOS)


def default_corpus(out: Path) -> list[str]:
    """Wikitext-103 (ChibiT's corpus) through Hugging Face `datasets`, written once as a text file."""
    path = out / "wikitext-103-train.txt"
    if path.is_file():
        return [str(path)]
    try:
        from datasets import load_dataset

        train = load_dataset("wikitext", "wikitext-103-raw-v1", split="train")
    except Exception as e:  # `datasets` missing, or no network
        raise FileNotFoundError(f"no --corpus given and Wikitext-103 could not be loaded ({type(e).__name__}: {e}); "
                                f"pass local text files with --corpus") from None
    with atomic_path(path, ".txt") as tmp:
        tmp.write_text("".join(train["text"]))
    return [str(path)]


def stdlib_corpus(path) -> Path:
    """An English corpus every machine has offline: the docstrings of the Python standard library's
    modules, classes and functions (tests excluded), in sorted file order, so one Python version
    always gives the same text (about 1.6 MB for Python 3.11). Written atomically to `path`."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for file in sorted(root.rglob("*.py")):
        parts = file.relative_to(root).parts
        if parts[0] in ("test", "site-packages", "idlelib", "lib2to3") or "tests" in parts:
            continue
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40:
                    texts.append(doc)
    with atomic_path(path, ".txt") as tmp:
        tmp.write_text("\n\n".join(texts) + "\n")
    return Path(path)


def tokenize_corpus(files: list[str], tokenizer) -> np.ndarray:
    ids = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: corpus file not found")
        ids.extend(tokenizer(path.read_text(errors="replace"))["input_ids"])
        ids.append(tokenizer.eos_token_id)
    return np.asarray(ids, np.int64)


def pretrain(cfg: PretrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Train; returns `<out>/model`, a Hugging Face GPT-2 directory with its tokenizer."""
    out = Path(cfg.out)
    claim_outputs([out], cfg.corpus, overwrite, resume)
    pick_device(cfg.device)  # refused before the run directory is made
    with run_directory(out, overwrite, resume, resumable_from="state") as run_dir:
        _pretrain(cfg, run_dir, resume, progress)
    return out / "model"


def _pretrain(cfg: PretrainConfig, out: Path, resume: bool, progress: bool) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    state_dir = out / "state"
    seed_everything(cfg.seed)
    if not cfg.corpus:
        cfg = cfg.model_copy(update={"corpus": default_corpus(out)})
    tokenizer = load_or_train_tokenizer(cfg, out)
    tokens = tokenize_corpus(cfg.corpus, tokenizer)
    if len(tokens) <= cfg.seq_len + 1:
        raise ValueError(f"the corpus has {len(tokens)} tokens, fewer than one block of {cfg.seq_len + 1}")
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    make_deterministic(device, cfg.deterministic)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
                        n_positions=cfg.n_positions, bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config).to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    step = 0
    if resume and state_dir.exists():
        state = load_train_state(state_dir)
        check_same_runtime(state.get("runtime"), runtime_kind(device, precision), state_dir)
        model.load_state_dict(state["model"], strict=False)  # the tied lm_head is not stored twice
        model.tie_weights()
        optim.load_state_dict(state["optimizer"])
        set_rng_states(state, device)
        rng.bit_generator.state = state["block_rng"]
        step = int(state["step"])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {**cfg.model_dump(), "corpus_tokens": int(len(tokens)),
                                     "vocab_size": len(tokenizer)})
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="lm pretrain", unit="step", disable=not progress)
    t_last, step_last = time.perf_counter(), step
    with open(out / "metrics.jsonl", "a") as log, Loggers(cfg.log, out, "lm", cfg.model_dump()) as loggers:
        while step < cfg.steps:
            starts = rng.integers(0, len(tokens) - cfg.seq_len, size=cfg.batch_size)
            batch = torch.from_numpy(tokens[starts[:, None] + np.arange(cfg.seq_len)]).to(device)
            lr = cfg.lr * min((step + 1) / cfg.warmup_steps, 1.0)
            for group in optim.param_groups:
                group["lr"] = lr
            with autocast(device, precision):
                loss = model(input_ids=batch, labels=batch).loss
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, error_if_nonfinite=True)
            optim.step()
            step += 1
            bar.update()
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                rec = {"step": step, "loss": loss.item(), "lr": lr, "steps_per_s": (step - step_last) / (now - t_last)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                loggers.log(rec, step)
                t_last, step_last = now, step
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if step % cfg.save_every == 0 or step == cfg.steps:
                _save(out, model, tokenizer, optim, rng, step, device, precision)
    bar.close()


def _save(out: Path, model, tokenizer, optim, rng, step: int, device, precision: str) -> None:
    with atomic_dir(out / "model") as tmp:
        model.save_pretrained(tmp)  # config.json + model.safetensors
        tokenizer.save_pretrained(tmp)
    state = {"step": step, "model": {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"},
             "optimizer": optim.state_dict(), **rng_states(device), "block_rng": rng.bit_generator.state,
             "runtime": runtime_kind(device, precision)}
    with atomic_dir(out / "state") as tmp:
        write_train_state(tmp, state)
