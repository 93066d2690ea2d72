"""Converters from the released preference datasets (and LLaVA-Instruct) to mmstudy's schema.

One module per dataset, each reading the file as its authors release it and documenting where to get it:
`llava_instruct` (prompt/answer "sft" records, BDHS's input), `povid`, `rlhf_v` and `rlaif_v`, `vlfeedback` (pairs
built from ranked completions), `ha_dpo`, and `trl` (anything already in TRL's preference format). Images resolve
against a user-given image root; images embedded as bytes are written there once, content-hashed. A malformed
record raises `DataError` naming the file, the record and the field; a missing image too, unless
`on_missing="skip"` (then it is skipped and counted).

    >>> result = convert("povid", "POVID_preference_data_for_VLLMs.json", ConvertConfig(image_root="coco"))
    >>> write_result(result, "prefs/povid.jsonl"); result.stats
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from mmstudy.converters.common import ConvertConfig, ConvertResult, SkipRecord
from mmstudy.converters.ha_dpo import convert_ha_dpo
from mmstudy.converters.llava_instruct import convert_llava_instruct
from mmstudy.converters.povid import convert_povid
from mmstudy.converters.rlhf_v import convert_rlaif_v, convert_rlhf_v
from mmstudy.converters.trl_prefs import convert_trl
from mmstudy.converters.vlfeedback import convert_vlfeedback
from mmstudy.data.preferences import PREFERENCE, SFT, write_records

CONVERTERS: dict[str, Callable[[Path, ConvertConfig], ConvertResult]] = {
    "llava_instruct": convert_llava_instruct,
    "povid": convert_povid,
    "rlhf_v": convert_rlhf_v,
    "vlfeedback": convert_vlfeedback,
    "rlaif_v": convert_rlaif_v,
    "ha_dpo": convert_ha_dpo,
    "trl": convert_trl,
}


def convert(kind: str, path: str | Path, cfg: ConvertConfig) -> ConvertResult:
    """Convert the released file `path` of dataset `kind` (a key of CONVERTERS)."""
    if kind not in CONVERTERS:
        raise ValueError(f"unknown dataset {kind!r}; known: {', '.join(CONVERTERS)}")
    return CONVERTERS[kind](Path(path), cfg)


def write_result(result: ConvertResult, path: str | Path) -> None:
    """Write converted records (.jsonl, .parquet, or an Arrow folder), validated, atomically."""
    write_records(path, result.records, SFT if result.kind == "sft" else PREFERENCE)


__all__ = ["CONVERTERS", "ConvertConfig", "ConvertResult", "SkipRecord", "convert", "write_result"]
