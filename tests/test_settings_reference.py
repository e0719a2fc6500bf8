"""The generated settings reference cannot drift from the declaration."""

from __future__ import annotations

from pathlib import Path

from prefork.ops import settings

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


def test_docs_settings_md_is_generated_from_the_declaration() -> None:
    assert REFERENCE.read_text() == settings.reference(), (
        "docs/settings.md is stale: run `python -m prefork.ops.settings > docs/settings.md`"
    )


def test_every_setting_has_a_flag_an_env_variable_and_help() -> None:
    for setting in settings.SETTINGS:
        if setting.section == "server hooks":  # functions: config file only
            assert not setting.flags
        else:
            assert setting.flags and all(flag.startswith("-") for flag in setting.flags)
        assert setting.env == "PREFORK_" + setting.name.upper()
        assert setting.help.endswith(".") and setting.kind
        if setting.default is not None:
            assert setting.convert(setting.default) == setting.default, setting.name
