"""Fill the config templates in bench/templates/ ({{NAME}} placeholders) into the run's work directory.

A plain placeholder syntax rather than str.format or string.Template, because nginx configs are full of `$`
and YAML/nginx of braces. Every placeholder must get a value and every value must be used: a typo fails loudly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from .layout import TEMPLATES_DIR
from .procs import HarnessError

_PLACEHOLDER = re.compile(r"\{\{([A-Z0-9_]+)\}\}")


def render(template: str, values: Mapping[str, object], destination: Path) -> Path:
    text = (TEMPLATES_DIR / template).read_text()
    names = set(_PLACEHOLDER.findall(text))
    missing = names - values.keys()
    unused = values.keys() - names
    if missing or unused:
        raise HarnessError(f"template {template}: missing values {sorted(missing)}, unused values {sorted(unused)}")
    destination.write_text(_PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), text))
    return destination
