"""Train the embedded tiny Llama (``at_probe/assets/tiny-xsum``) on XSum text.

Data rule: documents of ``../shared/data/xsum-at-release`` whose ``int(id) % 4 != 0``
train the model (each followed by the paper's prompt and its reference summary, so the
model has seen the summarisation format); documents with ``int(id) % 4 == 0`` are held
out and never seen. The held-out negative log-likelihood per token is compared with an
add-one unigram model fitted on the training text with the same tokenizer.

Usage:
    python analyses/train_tiny.py --data ../shared/data/xsum-at-release --out at_probe/assets/tiny-xsum

The recipe (architecture, optimiser, schedule, seed) is written to the model card
``README.md`` next to the weights, with the loss curve and the held-out result.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from at_probe.cli.args import (  # noqa: E402
    ArgumentParser,
    existing_dir,
    int_at_least,
    nonnegative_int,
    output_dir,
    positive_float,
    positive_int,
)
from at_probe.models.prompts import INSTRUCTION  # noqa: E402
from at_probe.runs.runfiles import write_json_atomic  # noqa: E402
from at_probe.xsum import is_heldout, load_all_documents  # noqa: E402

SPECIALS = ["<s>", "</s>", "<pad>"]


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE on ``texts``; adds ``<s>`` in front of every encoded text."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",
        model_max_length=4096,
    )


def training_texts(records: list[dict]) -> list[str]:
    """Document + prompt + reference summary, one string per training record."""
    return [r["document"] + INSTRUCTION + " " + r["summary"] for r in records]


def unigram_nll(train_ids: list[list[int]], eval_ids: list[list[int]], vocab: int) -> float:
    """Mean NLL (nats/token) of an add-one unigram model fitted on ``train_ids``.

    Scores the same positions as the model (every token after the first ``<s>``).
    """
    counts = torch.ones(vocab, dtype=torch.float64)
    for ids in train_ids:
        counts += torch.bincount(torch.tensor(ids[1:]), minlength=vocab).double()
    logp = (counts / counts.sum()).log()
    total, n = 0.0, 0
    for ids in eval_ids:
        total -= logp[torch.tensor(ids[1:])].sum().item()
        n += len(ids) - 1
    return total / n


@torch.no_grad()
def model_nll(model: LlamaForCausalLM, eval_ids: list[list[int]], max_len: int) -> float:
    """Mean NLL (nats/token) of ``model`` on each held-out sequence (truncated to ``max_len``)."""
    model.eval()
    total, n = 0.0, 0
    for ids in eval_ids:
        x = torch.tensor([ids[:max_len]])
        logits = model(x).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum")
        total += nll.item()
        n += x.shape[1] - 1
    model.train()
    return total / n


def make_config(args: argparse.Namespace, vocab: int, tok: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=args.d_model,
        intermediate_size=args.d_mlp,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads,
        max_position_embeddings=args.context,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        attn_implementation=args.attn,
    )


def batches(stream: torch.Tensor, seq_len: int, batch: int, gen: torch.Generator):
    """Endless random windows of ``seq_len + 1`` tokens from the packed training stream."""
    while True:
        starts = torch.randint(0, len(stream) - seq_len - 1, (batch,), generator=gen)
        yield torch.stack([stream[s : s + seq_len + 1] for s in starts.tolist()])


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="train_tiny.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=existing_dir, default="../shared/data/xsum-at-release")
    p.add_argument("--out", type=output_dir, default="at_probe/assets/tiny-xsum")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--vocab", type=int_at_least(len(SPECIALS) + 256), default=8192,
                   help="BPE vocabulary, at least the 256 bytes and the special tokens")
    p.add_argument("--d-model", type=positive_int, default=256)
    p.add_argument("--d-mlp", type=positive_int, default=704)
    p.add_argument("--n-layers", type=positive_int, default=8)
    p.add_argument("--n-heads", type=positive_int, default=4, help="query heads; must divide --d-model")
    p.add_argument("--n-kv-heads", type=positive_int, default=2,
                   help="key-value heads; must divide --n-heads")
    p.add_argument("--context", type=positive_int, default=4096)
    p.add_argument("--seq-len", type=positive_int, default=2048,
                   help="training sequence length, at most --context")
    p.add_argument("--batch", type=positive_int, default=4)
    p.add_argument("--steps", type=positive_int, default=500)
    p.add_argument("--warmup", type=nonnegative_int, default=30)
    p.add_argument("--lr", type=positive_float, default=3e-3)
    p.add_argument("--eval-every", type=positive_int, default=100)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa",
                   help="attention kernel used for training only")
    p.add_argument("--speed-test", action="store_true", help="time 5 steps and exit")
    args = p.parse_args(argv)
    if args.d_model % args.n_heads:
        p.error(f"argument --n-heads: {args.n_heads} does not divide --d-model {args.d_model}")
    if args.n_heads % args.n_kv_heads:
        p.error(f"argument --n-kv-heads: {args.n_kv_heads} does not divide --n-heads {args.n_heads}")
    if args.seq_len > args.context:
        p.error(f"argument --seq-len: {args.seq_len} is longer than --context {args.context}")

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)

    records = load_all_documents(args.data)
    train = [r for r in records if not is_heldout(r["id"])]
    held = [r for r in records if is_heldout(r["id"])]
    print(f"{len(train)} training documents, {len(held)} held out", flush=True)

    tok = train_tokenizer(training_texts(train), args.vocab)
    vocab = len(tok)
    eos = tok.eos_token_id
    train_ids = [tok(t)["input_ids"] + [eos] for t in training_texts(train)]
    held_ids = [tok(r["document"])["input_ids"] for r in held]
    stream = torch.tensor([i for ids in train_ids for i in ids])
    print(f"vocab {vocab}; {len(stream)} training tokens; held-out docs up to "
          f"{max(map(len, held_ids))} tokens", flush=True)

    model = LlamaForCausalLM(make_config(args, vocab, tok))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.2f}M parameters", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(args.seed)
    data = batches(stream, args.seq_len, args.batch, gen)
    uni = unigram_nll(train_ids, held_ids, vocab)
    print(f"held-out add-one unigram NLL: {uni:.4f} nats/token", flush=True)

    curve: list[dict] = []
    t0 = time.time()
    steps = 5 if args.speed_test else args.steps
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        xb = next(data)
        logits = model(xb[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), xb[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        elapsed = time.time() - t0
        tok_s = (step + 1) * args.batch * args.seq_len / elapsed
        if step % 10 == 0 or step == steps - 1:
            print(f"step {step} loss {loss.item():.4f} lr {lr_at(step, args):.2e} "
                  f"{tok_s:.0f} tok/s {elapsed / 60:.1f} min", flush=True)
        entry = {"step": step, "train_loss": round(loss.item(), 4)}
        if not args.speed_test and ((step + 1) % args.eval_every == 0 or step == steps - 1):
            entry["heldout_nll"] = round(model_nll(model, held_ids[:40], args.context), 4)
            print(f"  held-out NLL (40 docs) {entry['heldout_nll']:.4f} "
                  f"ratio {entry['heldout_nll'] / uni:.3f}", flush=True)
        curve.append(entry)
    if args.speed_test:
        return 0

    heldout = model_nll(model, held_ids, args.context)
    print(f"final held-out NLL {heldout:.4f}, unigram {uni:.4f}, ratio {heldout / uni:.3f}", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    model.config.torch_dtype = torch.float16
    model.half().save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    # Score the weights as stored (fp16), loaded back in float32 as at_probe does.
    stored = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32)
    heldout_stored = model_nll(stored, held_ids, args.context)
    stats = {
        "n_params": n_params,
        "vocab_size": vocab,
        "train_documents": len(train),
        "heldout_documents": len(held),
        "train_tokens": len(stream),
        "tokens_seen": steps * args.batch * args.seq_len,
        "heldout_nll": round(heldout_stored, 4),
        "unigram_nll": round(uni, 4),
        "ratio": round(heldout_stored / uni, 4),
        "wall_minutes": round((time.time() - t0) / 60, 1),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "curve": curve,
    }
    write_json_atomic(out / "training.json", stats)
    write_card(out, stats)
    print(json.dumps({k: v for k, v in stats.items() if k != "curve"}, indent=1))
    return 0


def write_card(out: Path, stats: dict) -> None:
    a = stats["args"]
    evals = [c for c in stats["curve"] if "heldout_nll" in c]
    rows = "\n".join(f"| {c['step'] + 1} | {c['train_loss']:.3f} | {c['heldout_nll']:.3f} |" for c in evals)
    size_mib = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**20
    (out / "README.md").write_text(f"""# tiny-xsum: the embedded tiny Llama of at_probe

A {stats['n_params'] / 1e6:.1f}M-parameter Llama (RoPE, RMSNorm, SwiGLU, grouped-query attention),
trained from scratch on CPU by `analyses/train_tiny.py` so that at_probe's hooks, probes and analyses
run offline. It exists to exercise structure and plumbing; it makes **no quality claims** and its
summaries are poor. Use a real checkpoint (`load_model("huggyllama/llama-7b")` or a local directory)
for findings about llama-7b.

## Architecture
{a['n_layers']} layers, width {a['d_model']}, MLP {a['d_mlp']}, {a['n_heads']} query heads and {a['n_kv_heads']}
key/value heads, tied embeddings, context {a['context']} positions, byte-level BPE vocabulary of
{stats['vocab_size']} (trained on the training text). Weights stored as float16 safetensors ({size_mib:.1f} MiB).

## Data rule
The 800 documents of `shared/data/xsum-at-release` (the paper's XSum release). Documents with
`int(id) % 4 != 0` ({stats['train_documents']}) are the training set, each as
`document + " Please summarize context above: " + reference summary + </s>`
({stats['train_tokens']} tokens). Documents with `int(id) % 4 == 0` ({stats['heldout_documents']}) are held
out: never trained on, used for every evaluation.

## Recipe
Seed {a['seed']}. AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), peak learning rate {a['lr']},
{a['warmup']} warm-up steps then cosine decay to 10%, {a['steps']} steps of {a['batch']} random windows of
{a['seq_len']} tokens from the packed training stream ({stats['tokens_seen']} tokens seen), gradient clip 1.0,
float32, {a['threads']} CPU threads, {stats['wall_minutes']} minutes.

## Result
Held-out NLL per token (all held-out documents, stored weights read back in float32):
**{stats['heldout_nll']:.4f}** nats, against **{stats['unigram_nll']:.4f}** for an add-one unigram model fitted on
the training text with the same tokenizer: ratio **{stats['ratio']:.3f}**.

Loss curve (held-out NLL on the first 40 held-out documents during training):

| step | train loss | held-out NLL |
| --- | --- | --- |
{rows}

`training.json` holds the whole curve and the arguments.
""")


if __name__ == "__main__":
    raise SystemExit(main())
