"""The XSum experiment: the paper's release and its held-out split (``release``), settings
strings (``settings``), development selection and reading it back (``selection``), batched
generation and teacher-forced NLL (``generation``), metrics (``metrics``: ROUGE, repetition,
position; ``semantic``: the primary metric), the paper's GPT-4 judgements (``judgements``).

Every name below is importable from ``at_probe.xsum`` as before the package split.

May import: ``at_probe.runs``, ``at_probe.models``, ``at_probe.flow``, ``at_probe.interventions``.
"""

from at_probe.xsum.generation import (
    NLLWorkerFactory,
    SummaryWorkerFactory,
    left_pad,
    prompt_limit,
    reference_nll,
    summarise,
)
from at_probe.xsum.metrics import (
    OPTIONAL_METRICS,
    PRIMARY_METRIC,
    score_summary,
)
from at_probe.xsum.release import (
    BUCKETS,
    TEXT_FIELDS,
    ReleaseRecords,
    bucket_file,
    is_development,
    is_heldout,
    load_all_documents,
    load_records,
    release_files,
    repair_note,
    repair_text,
    text_repair_manifest,
)
from at_probe.xsum.selection import (
    ALTERNATIVES_GRID,
    PLACEBO_ROLES,
    canonical_selection,
    minus_baseline,
    placebo_draws,
    run_settings,
    select_alternatives,
    select_settings,
    setting_roles,
)
from at_probe.xsum.settings import (
    ALTERNATIVES,
    PAPER_EXAMPLE,
    PAPER_GRID,
    PLACEBO_SEED,
    SRA_CANDIDATES,
    SettingError,
    check_settings,
    development_sweep_settings,
    parse_setting,
    parse_settings,
    placebo_of,
)

__all__ = [
    "ALTERNATIVES",
    "ALTERNATIVES_GRID",
    "bucket_file",
    "BUCKETS",
    "canonical_selection",
    "check_settings",
    "development_sweep_settings",
    "is_development",
    "is_heldout",
    "left_pad",
    "load_all_documents",
    "load_records",
    "minus_baseline",
    "NLLWorkerFactory",
    "OPTIONAL_METRICS",
    "PAPER_EXAMPLE",
    "PAPER_GRID",
    "parse_setting",
    "parse_settings",
    "placebo_draws",
    "placebo_of",
    "PLACEBO_ROLES",
    "PLACEBO_SEED",
    "PRIMARY_METRIC",
    "prompt_limit",
    "reference_nll",
    "release_files",
    "ReleaseRecords",
    "repair_note",
    "repair_text",
    "run_settings",
    "score_summary",
    "select_alternatives",
    "select_settings",
    "setting_roles",
    "SettingError",
    "SRA_CANDIDATES",
    "summarise",
    "SummaryWorkerFactory",
    "TEXT_FIELDS",
    "text_repair_manifest",
]
