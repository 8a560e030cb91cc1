"""``--help`` texts that must tell people how to configure a command."""

from __future__ import annotations

from click.testing import CliRunner

from farm.api.auth import MIN_TOKEN_CHARS
from farm.cli import cli

SECRET = "help-must-never-show-this-token-0123456789"


def test_api_help_names_the_token_variable_and_never_its_value() -> None:
    result = CliRunner().invoke(cli, ["api", "--help"], env={"FARM_API_TOKEN": SECRET})
    assert result.exit_code == 0, result.output
    assert "FARM_API_TOKEN" in result.output
    assert f"at least {MIN_TOKEN_CHARS} characters" in result.output
    assert SECRET not in result.output
    # the token is an environment variable only, never an option (values of options leak)
    assert "--token" not in result.output and "--api-token" not in result.output


def test_farm_help_says_the_api_needs_a_token() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    api_line = next(line for line in result.output.splitlines() if line.strip().startswith("api "))
    assert "FARM_API_TOKEN" in api_line
