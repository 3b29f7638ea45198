"""Optional LLM judge for an ``xsum_eval.py`` run, with the paper's evaluation prompt.

Off by default and never needed by the other steps. For each document of the run, all its
settings' outputs are scored (0-100) in one request, as the paper did with GPT-4, through any
OpenAI-compatible ``/chat/completions`` endpoint. The prompt follows the authors' evaluation
notebook (yileijin/Attention-Transition, ``evaluation/evaluation.ipynb``); the summaries are
keyed ``decode_or`` (baseline) and ``decode_set1``... so the reply parses like the release.

The API key is read from the environment variable named by ``--api-key-env`` (default
``OPENAI_API_KEY``); it is sent in the request header only, never printed or written, only to
an https endpoint (plain http only on loopback), and never across a redirect to another host.
The release file must be the one the run used (its sha256 is checked against the manifest).
Results go to ``RUN/judgements.jsonl`` (one line per document, fsynced; resumable after a kill).

Usage:
    OPENAI_API_KEY=... python analyses/xsum_judge.py runs/tiny800 --endpoint https://api.example.com/v1 --model gpt-4
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
from pathlib import Path

import httpx
from tqdm.auto import tqdm

from at_probe.cli.args import ArgumentParser, existing_dir, positive_int, prog
from at_probe.runs.errors import UsageError
from at_probe.runs.runfiles import RunDirectoryBusy, append_jsonl, file_sha256, owned_run, read_jsonl
from at_probe.xsum import load_records
from at_probe.xsum.judgements import parse_scores

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


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address (127.0.0.0/8, ::1); never a name that merely looks like one."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(endpoint: str) -> str:
    """The endpoint, if it is https (or plain http on this machine's loopback, for tests).

    Raises:
        ValueError: another scheme or a non-loopback http endpoint (the key would travel in clear).
    """
    url = httpx.URL(endpoint)
    loopback = is_loopback(url.host)
    if url.scheme != "https" and not (url.scheme == "http" and loopback):
        raise ValueError(f"--endpoint must be https (plain http only on loopback): {endpoint}")
    return endpoint.rstrip("/")


def judge_client(api_key: str, *, retries: int = 3, timeout: float = 120) -> httpx.Client:
    """An HTTP client that sends the key as a bearer token and retries failed connections.

    httpx drops the ``Authorization`` header when a redirect leaves the endpoint's origin, so
    the key never reaches another host.
    """
    return httpx.Client(headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout,
                        follow_redirects=True, transport=httpx.HTTPTransport(retries=retries))


def ask(client: httpx.Client, endpoint: str, model: str, prompt: str, *, attempts: int = 3) -> str:
    """One chat completion (temperature 0); retries 429 and 5xx answers with backoff."""
    payload = {"model": model, "temperature": 0, "messages": [{"role": "user", "content": prompt}]}
    for attempt in range(attempts):
        try:
            response = client.post(endpoint + "/chat/completions", json=payload)
            if response.status_code == 429 or response.status_code >= 500:
                raise httpx.HTTPStatusError(f"HTTP {response.status_code}", request=response.request,
                                            response=response)
            response.raise_for_status()
            return response.json()["choices"][0]["message"]["content"]
        except (httpx.HTTPError, KeyError, ValueError) as err:
            retry = isinstance(err, httpx.HTTPStatusError) and (
                err.response.status_code == 429 or err.response.status_code >= 500)
            if attempt == attempts - 1 or not (retry or isinstance(err, httpx.TransportError)):
                raise RuntimeError(f"judge request failed: {type(err).__name__}: {err}") from None
            time.sleep(2 ** attempt)
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="xsum_judge.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=existing_dir)
    p.add_argument("--endpoint", required=True,
                   help="base URL of an OpenAI-compatible API (…/v1): https, or plain http on loopback")
    p.add_argument("--model", required=True, help="judge model name")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY")
    p.add_argument("--data", type=existing_dir, default=Path("../shared/data/xsum-at-release"))
    p.add_argument("--limit", type=positive_int, default=None, help="judge at most N documents")
    args = p.parse_args(argv)

    api_key = os.environ.get(args.api_key_env)
    if not api_key:
        print(f"{prog('xsum_judge.py')}: error: environment variable {args.api_key_env} is not set", file=sys.stderr)
        return 2
    try:
        endpoint = check_endpoint(args.endpoint)
        manifest = json.loads((args.run / "manifest.json").read_text())
        records = read_jsonl(args.run / "records.jsonl")
        data_file = args.data / manifest["data_file"]
        if file_sha256(data_file) != manifest["data_sha256"]:
            raise ValueError(f"{data_file} is not the file the run used (sha256 differs from the manifest)")
        docs = {str(r["id"]): r for r in load_records(data_file, fix_text=manifest.get("fix_text", False))}
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"{prog('xsum_judge.py')}: error: {err}", file=sys.stderr)
        return 2
    keys = judge_keys(manifest["settings"])
    by_doc: dict[str, dict[str, str]] = {}
    for r in records:
        by_doc.setdefault(r["doc_id"], {})[keys[r["setting"]]] = r["output"]
    out_path = args.run / "judgements.jsonl"
    try:
        with owned_run(args.run, role="judge"):  # one judge per run (xsum_eval.py may still be running)
            # a partial last line from a kill is cut
            done = {r["doc_id"] for r in read_jsonl(out_path, repair=True, role="judge")}
            todo = [d for d in by_doc if d not in done and len(by_doc[d]) == len(keys)][: args.limit]
            names = {v: k for k, v in keys.items()}
            with judge_client(api_key) as client, open(out_path, "a", encoding="utf-8") as out:
                for doc_id in tqdm(todo, desc="judge"):
                    prompt = build_prompt(docs[doc_id]["document"], by_doc[doc_id])
                    reply = ask(client, endpoint, args.model, prompt)
                    scores = {names[k]: v for k, v in parse_scores(reply).items() if k in names}
                    append_jsonl(out, [{"doc_id": doc_id, "scores": scores, "reply": reply}])
    except (RunDirectoryBusy, UsageError) as err:  # another judge; a corrupt judgements.jsonl
        print(f"{prog('xsum_judge.py')}: error: {err}", file=sys.stderr)
        return 2
    print(f"judged {len(todo)} documents; wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
