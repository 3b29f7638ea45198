"""The long-context bench's prompts and scores: seeded prompts that fit, needles where they
were put, haystacks from development documents only, and a teacher-forced exact match that
is exactly greedy decoding (tiny model; SmolLM2's chat tokenizer for the prompts)."""

from __future__ import annotations

import pytest
import torch

from at_probe.interventions.temperature import AttentionTemperature
from at_probe.interventions.transition import PaperTransition, PlaceboTransition, SRATransition
from at_probe.longctx.scoring import reply, score
from at_probe.longctx.tasks import DEPTHS, TASKS, answer_items, build, development_documents, make_spec
from at_probe.models.chunked import chunked_attention
from tests.conftest import XSUM_DIR, require_shared, require_smollm2


@pytest.fixture(scope="module")
def documents():
    return development_documents(require_shared(XSUM_DIR))


@pytest.fixture(scope="module")
def chat_tokenizer():
    from at_probe.models.loading import load_tokenizer

    require_smollm2()
    return load_tokenizer("smollm2")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("length", [1024, 2048])
def test_a_prompt_fits_its_length_and_holds_its_needles(chat_tokenizer, documents, task, length):
    spec = make_spec(chat_tokenizer, documents, task, length=length, depth=0.5, index=4)
    built = build(chat_tokenizer, spec)
    total = len(built.prompt) + len(built.answer_ids)
    assert length - 120 < total <= length  # as many haystack sentences as fit
    needles = [spec["context"][a:b] for a, b in spec["needles"]]
    for (start, end), text in zip(built.needles + built.distractors, needles):
        assert chat_tokenizer.decode(list(built.prompt.ids[start:end])) == text
        assert built.prompt.document[0] <= start < end <= built.prompt.document[1]
    assert len(built.needles) == (4 if task == "vt" else 1)
    assert len(built.distractors) == (3 if task == "kv_distractors" else 0)
    assert chat_tokenizer.decode(built.answer_ids) == spec["answer"]
    assert spec["answer"].strip().split(", ")[0] in " ".join(needles)  # the answer is in the first needle
    items = answer_items(spec)  # what a generated reply must hold: the chain's variables, else the value
    assert len(items) == (4 if task == "vt" else 1) and all(item and item in " ".join(needles) for item in items)


@pytest.mark.parametrize("task", TASKS)
def test_a_needle_span_holds_the_needle_and_no_newline(chat_tokenizer, task):
    """One-sentence documents: every needle follows a document's blank line, whose last newline
    is a token of its own and must stay out of the span (a space before the needle is part of
    its first token and stays in)."""
    documents = [f"Report {i} says the river rose by {i % 7} metres overnight." for i in range(300)]
    spec = make_spec(chat_tokenizer, documents, task, length=512, depth=0.5, index=1)
    built = build(chat_tokenizer, spec)
    starts = [a for a, _ in spec["needles"]]
    assert any(spec["context"][a - 1] == "\n" for a in starts if a)  # the case this test is for
    for (a, b), (start, end) in zip(spec["needles"], built.needles + built.distractors):
        text = chat_tokenizer.decode(list(built.prompt.ids[start:end]))
        assert text == spec["context"][a:b] and text.lstrip(" ")[:1].isalpha()


def test_prompts_are_seeded_by_their_coordinates(chat_tokenizer, documents):
    a = make_spec(chat_tokenizer, documents, "kv", length=1024, depth=0.3, index=7)
    assert a == make_spec(chat_tokenizer, documents, "kv", length=1024, depth=0.3, index=7)
    b = make_spec(chat_tokenizer, documents, "kv", length=1024, depth=0.3, index=8)
    assert a["answer"] != b["answer"] and a["context"] != b["context"]
    assert a["id"] == "kv-1024-0.3-007"


def test_the_needle_moves_with_the_depth_to_a_sentence_end(chat_tokenizer, documents):
    starts = []
    for depth in DEPTHS:
        spec = make_spec(chat_tokenizer, documents, "passkey", length=2048, depth=depth, index=0)
        (a, b), = spec["needles"]
        fraction = a / len(spec["context"])
        assert fraction <= depth + 0.02 and fraction > depth - 0.1
        before = spec["context"][:a].rstrip()
        assert not before or before[-1] in ".!?\"'’”)"  # right after a sentence end
        starts.append(a)
    assert starts == sorted(starts)


def test_the_haystack_is_never_a_heldout_test_document(chat_tokenizer):
    from at_probe.xsum.release import is_heldout, load_all_documents, repair_text

    records = load_all_documents(require_shared(XSUM_DIR))
    documents = [repair_text(d["document"]) for d in records if not is_heldout(d["id"])]
    heldout = [repair_text(d["document"]) for d in records if is_heldout(d["id"])]
    spec = make_spec(chat_tokenizer, documents, "passkey", length=4096, depth=0.5, index=3)
    context = spec["context"]
    assert not any(h.strip()[:80] in context for h in heldout if len(h.strip()) >= 80)
    assert sum(d.strip()[:80] in context for d in documents) >= 3  # several development documents


@pytest.mark.parametrize("bad", [{"task": "nope"}, {"depth": 1.5}, {"length": 40}])
def test_bad_specs_are_refused(chat_tokenizer, documents, bad):
    kwargs = {"task": "passkey", "length": 1024, "depth": 0.5, **bad}
    with pytest.raises(ValueError):
        make_spec(chat_tokenizer, documents, kwargs.pop("task"), index=0, **kwargs)


EDITS = {"baseline": lambda: None, "paper": lambda: PaperTransition(), "placebo": lambda: PlaceboTransition(seed=1),
         "sra": lambda: SRATransition(begin_length=5, threshold_len=50),
         "temperature": lambda: AttentionTemperature(tau=1.5, layers=range(4, 8))}


@pytest.mark.parametrize("edit", list(EDITS))
def test_exact_match_is_greedy_decoding(tiny_model, documents, edit):
    """Score the model's own greedy continuation (exact must hold) and that continuation with its
    third token changed (exact must fail, with two right tokens): the teacher-forced pass
    agrees with ``generate`` under the same edit."""
    tok = tiny_model.tokenizer
    spec = make_spec(tok, documents, "passkey", length=600, depth=0.5, index=2)
    built = build(tok, spec)
    with (EDITS[edit]() or _Null()).applied(tiny_model, prompts=[built.prompt]), torch.inference_mode():
        out = tiny_model.generate(built.prompt.tensor(), max_new_tokens=4, do_sample=False, verbose=False)
    greedy = out[0, len(built.prompt):].tolist()
    wrong = [*greedy[:2], (greedy[2] + 1) % 4000 + 3, greedy[3]]
    for answer, exact, right in ((greedy, True, 4), (wrong, False, 2)):
        case = type(built)(built.spec, built.prompt, answer, built.needles, built.distractors)
        result = score(tiny_model, case, EDITS[edit]())
        assert (result["exact"], result["tokens_right"]) == (exact, right)
        if exact:  # the argmax of every answer row is the generated token
            assert result["greedy"] == tok.decode(greedy)
        assert result["logprob"] < 0 and len(result["needle_mass"]) == int(tiny_model.cfg.n_layers)


class _Null:
    """The baseline's stand-in for ``edit.applied``."""

    def applied(self, model, **kwargs):
        from contextlib import nullcontext

        return nullcontext(model)


def test_scores_under_chunked_attention_equal_the_stock_scores(tiny_model, documents):
    built = build(tiny_model.tokenizer, make_spec(tiny_model.tokenizer, documents, "kv_distractors", length=900,
                                                  depth=0.7, index=1))
    for edit in EDITS.values():
        ref = score(tiny_model, built, edit())
        with chunked_attention(tiny_model, rows=128):
            assert score(tiny_model, built, edit()) == ref


def _setting(text):
    from at_probe.xsum.settings import parse_settings

    return lambda: next(iter(parse_settings(text).values()))


# the transitions of the knockout run, and the peers whose hooks keep state across a pass
# (ACT's hidden sinks from a pre-pass, Ms-PoE's head ranking from the layer's input)
KNOCKOUT_EDITS = {**EDITS, "sra": lambda: SRATransition(), "placebo": lambda: PlaceboTransition(seed=1),
                  "act": _setting("sink_calibration:threshold=0.03"),
                  "ms_poe": _setting("multiscale_positions:low=1.5,high=3")}


@pytest.mark.parametrize("edit", list(KNOCKOUT_EDITS))
def test_the_needle_knockout_estimate_is_the_first_order_change(tiny_model, documents, edit):
    """``needle_knockout[l]`` equals d/de logprob(A + e dA_l) at e = 0, where dA_l knocks every
    target needle out at layer l (variable tracking: four spans, each for the rows after it),
    taken by autograd through a whole pass with the edit active; the other scores are those of
    a pass without the estimate, and chunked attention gives the same estimate."""
    from at_probe.flow import ops
    from at_probe.models.names import pattern_hook

    tok = tiny_model.tokenizer
    built = build(tok, make_spec(tok, documents, "vt", length=600, depth=0.3, index=0))
    with torch.inference_mode():  # the estimate takes its gradients all the same
        result = score(tiny_model, built, KNOCKOUT_EDITS[edit](), knockout=True)
    causal = ("needle_knockout", "needle_knockout_exact")
    assert {k: v for k, v in result.items() if k not in causal} == score(tiny_model, built, KNOCKOUT_EDITS[edit]())
    n, target = len(built.prompt), torch.tensor(built.answer_ids)
    ids = torch.tensor([[*built.prompt.ids, *built.answer_ids]])
    for layer in (0, 5, int(tiny_model.cfg.n_layers) - 1):
        eps = torch.zeros((), requires_grad=True)

        def scaled(pattern, *, hook):
            knocked = pattern.detach().clone()
            for a, b in built.needles:
                knocked = ops.knockout(knocked, a, b)
            return pattern + eps * (knocked - pattern.detach())

        edit_hooks = [] if KNOCKOUT_EDITS[edit]() is None else KNOCKOUT_EDITS[edit]().hooks(tiny_model, prompts=[built.prompt])
        logits = tiny_model.run_with_hooks(ids, fwd_hooks=edit_hooks + [(pattern_hook(layer), scaled)])
        logprob = logits[0, n - 1 : -1].float().log_softmax(-1).gather(-1, target[:, None]).sum()
        (slope,) = torch.autograd.grad(logprob, eps)
        assert result["needle_knockout"][layer] == pytest.approx(float(slope), rel=1e-3, abs=2e-5)
    assert max(abs(v) for v in result["needle_knockout"]) > 1e-3

    def knocked(pattern, *, hook):  # every layer: the exact knockout the first-order sum estimates
        out = pattern.clone()
        for a, b in built.needles:
            out = ops.knockout(out, a, b)
        return out

    edit_hooks = [] if KNOCKOUT_EDITS[edit]() is None else KNOCKOUT_EDITS[edit]().hooks(tiny_model, prompts=[built.prompt])
    with torch.inference_mode():
        logits = tiny_model.run_with_hooks(ids, fwd_hooks=edit_hooks + [(pattern_hook(l), knocked) for l in
                                                                          range(int(tiny_model.cfg.n_layers))])
    logprob = logits[0, n - 1 : -1].float().log_softmax(-1).gather(-1, target[:, None]).sum()
    assert result["needle_knockout_exact"] == pytest.approx(float(logprob) - result["logprob"], abs=2e-5)
    assert abs(result["needle_knockout_exact"]) > 1e-3
    with chunked_attention(tiny_model, rows=128):
        chunked = score(tiny_model, built, KNOCKOUT_EDITS[edit](), knockout=True)
    assert chunked["needle_knockout"] == pytest.approx(result["needle_knockout"], rel=1e-4, abs=1e-6)
    assert chunked["needle_knockout_exact"] == pytest.approx(result["needle_knockout_exact"], abs=1e-5)


@pytest.mark.parametrize("edit", list(KNOCKOUT_EDITS))
def test_a_reply_is_the_greedy_continuation_and_its_match_counts_the_answers_items(tiny_model, documents, edit):
    """``reply`` is the greedy continuation that ``generate`` without the KV cache gives under
    the same edit, cut at the first special token; the edit acted on the reply's prompt rows
    (its report); chunked attention gives the same reply; ``reply_match`` is the share of the
    answer's items found in it, ignoring case (two of four here)."""
    tok = tiny_model.tokenizer
    built = build(tok, make_spec(tok, documents, "passkey", length=600, depth=0.5, index=2))  # where the
    make = KNOCKOUT_EDITS[edit]  # temperature, ACT and Ms-PoE change the reply
    with (make() or _Null()).applied(tiny_model, prompts=[built.prompt]), torch.inference_mode():
        out = tiny_model.generate(built.prompt.tensor(), max_new_tokens=10, do_sample=False, use_past_kv_cache=False,
                                  verbose=False)
    new = out[0, len(built.prompt):].tolist()
    cut = next((i for i, t in enumerate(new) if t in tok.all_special_ids), len(new))
    text = tok.decode(new[:cut])
    intervention = make()
    result = reply(tiny_model, built, intervention, 10)
    assert {k: result[k] for k in ("reply", "reply_length", "reply_ended")} == {
        "reply": text, "reply_length": cut, "reply_ended": cut < len(new)}
    if intervention is not None:
        assert _edited(intervention.last_report()), f"{edit} edited no rows of the reply's prompt"
    with chunked_attention(tiny_model, rows=128):
        assert reply(tiny_model, built, make(), 10) == result
    assert len(text.strip()) >= 6, f"the tiny model's reply {text!r} is too short for this test"
    head, tail = text.strip()[:3], text.strip()[-3:]  # items it holds, in another case
    answer = " " + ", ".join([head.upper(), "QXZQXJ", tail.lower(), "ZJQXZQ"])
    case = type(built)({**built.spec, "answer": answer}, built.prompt, built.answer_ids, built.needles,
                       built.distractors)
    assert reply(tiny_model, case, make(), 10)["reply_match"] == 0.5


def _edited(report) -> bool:
    """Whether an intervention's report shows edited rows (a transition's, an alternative's) or
    rescaled heads (Ms-PoE's)."""
    if hasattr(report, "ratios"):
        return bool(report.ratios)
    return any(getattr(r, "rows_touched", getattr(r, "rows_edited", 0)) > 0 for r in report.layers.values())


@pytest.mark.parametrize(("run", "prompt"), [("primary", "passkey-1024-0.1-000"), ("secondary", "vt-2048-0.5-002"),
                                             ("secondary", "kv_distractors-8192-0.9-029"),
                                             ("replies", "vt-1024-0.3-001")])
def test_the_committed_runs_prompts_are_what_this_code_builds(chat_tokenizer, documents, run, prompt):
    """The hash a committed run's manifest keeps for a prompt is the hash of the prompt this
    code builds under that id: the runs resume and pair with today's prompts (a change to the
    tasks, the tokenizer or the text repair fails here before a run refuses it)."""
    import json

    from at_probe.longctx.run import prompt_hashes
    from tests.conftest import REPO

    manifest = json.loads((REPO / "figures" / "longctx-smollm2" / run / "manifest.json").read_text())
    task, length, depth, index = prompt.rsplit("-", 3)
    spec = make_spec(chat_tokenizer, documents, task, length=int(length), depth=float(depth), index=int(index))
    assert prompt_hashes(chat_tokenizer, [spec]) == {prompt: manifest["prompt_sha256"][prompt]}
