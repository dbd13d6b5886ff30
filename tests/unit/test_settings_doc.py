"""docs/configuration.md lists every `STT_` setting, exactly as the settings classes define them."""

from __future__ import annotations

from stt_devstack import settingsdoc


def test_settings_table_is_up_to_date() -> None:
    committed = settingsdoc.DOC.read_text()
    assert settingsdoc.updated(committed) == committed, (
        f"the settings table in {settingsdoc.DOC.name} is out of date: run `{settingsdoc.COMMAND}`"
    )


def test_settings_table_covers_every_setting() -> None:
    table = settingsdoc.render()
    for cls in settingsdoc.SERVICES.values():
        for name in cls.model_fields:
            assert f"`STT_{name.upper()}`" in table, name
