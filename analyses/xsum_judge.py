"""Optional LLM judge for an ``xsum_eval.py`` run, with the paper's evaluation prompt.

Off by default and never needed by the other steps. For each document of the run, all its
settings' outputs are scored (0-100) in one request, as the paper did with GPT-4, through any
OpenAI-compatible ``/chat/completions`` endpoint. The prompt follows the authors' evaluation
notebook (yileijin/Attention-Transition, ``evaluation/evaluation.ipynb``); the summaries are
keyed ``decode_or`` (baseline) and ``decode_set1``... so the reply parses like the release.

The API key is read from the environment variable named by ``--api-key-env`` (default
``OPENAI_API_KEY``); it is sent in the request header only, never printed or written.
Results go to ``RUN/judgements.jsonl`` (one line per document; resumable).

Usage:
    OPENAI_API_KEY=... python analyses/xsum_judge.py runs/tiny800 --endpoint https://api.example.com/v1 --model gpt-4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from at_probe.judgements import parse_scores
from at_probe.xsum import load_records

# The authors' instructions (evaluation.ipynb, "with reason" variant), kept verbatim for fidelity.
_OPENING = "Given a document and some summaries, please evaluate these summaries with scores ranging from 0 to 100."
_CLOSING = ("Within summaries, please ignore the incomplete parts and the duplicate part, duplication and "
            "incompleteness will not diminish the score. Only return scores and the reason to score, sentence "
            "by sentence, with this pattern:  summary_index:  $$Score$$: , $$Reason$$: .")


def judge_keys(settings: list[str]) -> dict[str, str]:
    """Setting name -> key shown to the judge (``decode_or`` for the baseline)."""
    keys, n = {}, 0
    for s in settings:
        if s == "baseline":
            keys[s] = "decode_or"
        else:
            n += 1
            keys[s] = f"decode_set{n}"
    return keys


def build_prompt(document: str, outputs: dict[str, str]) -> str:
    """The paper's layout: document, then the baseline, then the other summaries, then instructions."""
    order = sorted(outputs, key=lambda k: k != "decode_or")
    body = f"'document':'{document}'\n" + "".join(f"'{k}':'{outputs[k]}'\n" for k in order)
    return _OPENING + body + _CLOSING


def ask(endpoint: str, model: str, api_key: str, prompt: str, *, retries: int = 3, timeout: float = 120) -> str:
    """One chat completion (temperature 0); retries transient failures."""
    request = urllib.request.Request(
        endpoint.rstrip("/") + "/chat/completions",
        data=json.dumps({"model": model, "temperature": 0,
                         "messages": [{"role": "user", "content": prompt}]}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
    )
    for attempt in range(retries):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.load(response)["choices"][0]["message"]["content"]
        except (urllib.error.URLError, TimeoutError, KeyError, json.JSONDecodeError) as err:
            if attempt == retries - 1:
                raise RuntimeError(f"judge request failed: {type(err).__name__}: {err}") from None
            time.sleep(2 ** attempt)
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--endpoint", required=True, help="base URL of an OpenAI-compatible API (…/v1)")
    p.add_argument("--model", required=True, help="judge model name")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY")
    p.add_argument("--data", type=Path, default=Path("../shared/data/xsum-at-release"))
    p.add_argument("--limit", type=int, default=None)
    args = p.parse_args(argv)

    api_key = os.environ.get(args.api_key_env)
    if not api_key:
        print(f"xsum_judge.py: error: environment variable {args.api_key_env} is not set", file=sys.stderr)
        return 2
    try:
        manifest = json.loads((args.run / "manifest.json").read_text())
        records = [json.loads(l) for l in (args.run / "records.jsonl").read_text().splitlines() if l.strip()]
        docs = {str(r["id"]): r for r in load_records(args.data / manifest["data_file"])}
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"xsum_judge.py: error: {err}", file=sys.stderr)
        return 2
    keys = judge_keys(manifest["settings"])
    by_doc: dict[str, dict[str, str]] = {}
    for r in records:
        by_doc.setdefault(r["doc_id"], {})[keys[r["setting"]]] = r["output"]
    out_path = args.run / "judgements.jsonl"
    done = set()
    if out_path.is_file():
        done = {json.loads(l)["doc_id"] for l in out_path.read_text().splitlines() if l.strip()}
    todo = [d for d in by_doc if d not in done and len(by_doc[d]) == len(keys)][: args.limit]
    names = {v: k for k, v in keys.items()}
    with open(out_path, "a", encoding="utf-8") as out:
        for doc_id in tqdm(todo, desc="judge"):
            reply = ask(args.endpoint, args.model, api_key, build_prompt(docs[doc_id]["document"], by_doc[doc_id]))
            scores = {names[k]: v for k, v in parse_scores(reply).items() if k in names}
            out.write(json.dumps({"doc_id": doc_id, "scores": scores, "reply": reply}) + "\n")
            out.flush()
    print(f"judged {len(todo)} documents; wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
