"""The table of every `STT_` setting, rendered from the services' pydantic settings classes.

    .venv/bin/python -m stt_devstack.settingsdoc           # rewrite the table in docs/configuration.md
    .venv/bin/python -m stt_devstack.settingsdoc --check   # exit 1 if it is out of date

Only the region between the two markers is rewritten; tests/unit/test_settings_doc.py fails when the
committed table differs from what this renders.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from stt_chunker.settings import ChunkerSettings
from stt_common.settings import ProviderSettings, Settings
from stt_ingest.settings import IngestSettings
from stt_maintenance.settings import MaintenanceSettings
from stt_merger.settings import MergerSettings
from stt_notifier.settings import NotifierSettings
from stt_transcriber.settings import TranscriberSettings

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"
BEGIN = "<!-- settings-table:begin (python -m stt_devstack.settingsdoc) -->"
END = "<!-- settings-table:end -->"
COMMAND = ".venv/bin/python -m stt_devstack.settingsdoc"
DOC_TITLE = "Render the table of every STT_ setting into docs/configuration.md."

SERVICES: dict[str, type[BaseSettings]] = {
    "ingest": IngestSettings,
    "chunker": ChunkerSettings,
    "transcriber": TranscriberSettings,
    "merger": MergerSettings,
    "notifier": NotifierSettings,
    "maintenance": MaintenanceSettings,
}
SHARED: tuple[type[BaseSettings], ...] = (Settings, ProviderSettings)


def _value(value: object) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None or value == "" or value == []:
        return ""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, list | tuple):
        value = ",".join(str(int(v) if isinstance(v, float) and v.is_integer() else v) for v in value)
    return f"`{value}`"


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return _value(info.default_factory())  # type: ignore[call-arg]
    return "" if info.default is PydanticUndefined else _value(info.default)


def _names(name: str, infos: list[FieldInfo]) -> str:
    names = [f"STT_{name.upper()}"]
    for info in infos:
        if isinstance(info.validation_alias, AliasChoices):
            names += [str(choice) for choice in info.validation_alias.choices]
    return ", ".join(f"`{n}`" for n in dict.fromkeys(names))


def _variants(per_service: dict[str, str], base: str | None, sep: str, *, skip_empty: bool = False) -> str:
    """One value for all, or the shared one followed by each service's own (`ingest: …`)."""
    if base is None and len(set(per_service.values())) == 1:
        return next(iter(per_service.values()))
    own = [
        f"{service}: {value or '(none)'}"
        for service, value in per_service.items()
        if value != base and (value or not skip_empty)
    ]
    return sep.join(([base] if base else []) + own)


def _text(info: FieldInfo | None) -> str:
    return " ".join((info.description or "").split()).replace("|", "\\|") if info else ""


def rows() -> list[tuple[str, str, str, str]]:
    """(setting, default, services, description) for every field of every service's settings."""
    fields: dict[str, dict[str, FieldInfo]] = {}
    for service, cls in SERVICES.items():
        for name, info in cls.model_fields.items():
            fields.setdefault(name, {})[service] = info
    table = []
    for name in sorted(fields):
        per = fields[name]
        base = next((cls.model_fields[name] for cls in SHARED if name in cls.model_fields), None)
        services = "all" if len(per) == len(SERVICES) else ", ".join(per)
        default = _variants({s: _default(i) for s, i in per.items()}, _default(base) if base else None, "; ")
        described = {s: _text(i) for s, i in per.items()}
        description = _variants(described, _text(base) if base else None, " ", skip_empty=True)
        table.append((_names(name, list(per.values())), default, services, description))
    return table


def render() -> str:
    lines = ["| setting | default | services | description |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |".replace("|  |", "| |") for row in rows()]
    return "\n".join(lines)


def updated(text: str) -> str:
    """The document with the table between the markers replaced."""
    head, found, rest = text.partition(BEGIN)
    if not found or END not in rest:
        raise ValueError(f"{DOC.name} lacks the markers {BEGIN!r} … {END!r}")
    return f"{head}{BEGIN}\n{render()}\n{END}{rest.split(END, 1)[1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stt_devstack.settingsdoc", description=DOC_TITLE)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed table is out of date")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    new = updated(text)
    if args.check:
        if new != text:
            print(f"{DOC} is out of date: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    if new != text:
        DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
