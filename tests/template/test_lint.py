"""The template passes cfn-lint and `sam validate --lint`; samconfig.toml's parameters are ones the
template accepts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.template.stack import ROOT, TEMPLATE, load_sam_template

pytestmark = pytest.mark.template

SAM_VENV = ROOT / ".venv-sam"
SAM = SAM_VENV / "bin" / "sam"
# `make test` sets this: there, a missing SAM CLI is a failure, not a skip.
REQUIRE_SAM = os.environ.get("OWNPAGE_SYNC_REQUIRE_SAM") == "1"


def _sam_or_skip() -> Path:
    if not SAM.exists():
        if REQUIRE_SAM:
            pytest.fail("the SAM CLI is missing from .venv-sam/ (make sam)")
        pytest.skip("SAM CLI not installed in .venv-sam/ - `make sam` (make test and make lint install it)")
    return SAM


def _sam_env() -> dict[str, str]:
    return {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "eu-west-1"}


def test_cfn_lint_finds_nothing() -> None:
    # Given the template as written (cfn-lint transforms SAM itself)
    from cfnlint.api import lint_file

    # When cfn-lint, through its Python API, checks it with the template's own configuration
    matches = lint_file(TEMPLATE)
    # Then there is no error, warning or informational finding
    assert [str(match) for match in matches] == []


def test_sam_validate_lint_passes() -> None:
    sam = _sam_or_skip()
    result = subprocess.run(
        [str(sam), "validate", "--lint", "--template-file", str(TEMPLATE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_sam_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


def _samconfig_overrides() -> dict[str, dict[str, str]]:
    """Each environment's parameter_overrides, parsed by SAM CLI's own parser (quotes and all)."""
    sam_python = SAM_VENV / "bin" / "python"
    _sam_or_skip()
    script = (
        "import json, sys, tomllib\n"
        "from samcli.cli.types import CfnParameterOverridesType\n"
        "config = tomllib.load(open(sys.argv[1], 'rb'))\n"
        "parse = CfnParameterOverridesType().convert\n"
        "print(json.dumps({env: parse(tuple(section['deploy']['parameters']['parameter_overrides']), None, None)\n"
        "                  for env, section in config.items() if isinstance(section, dict) and 'deploy' in section}))\n"
    )
    result = subprocess.run(
        [str(sam_python), "-c", script, str(ROOT / "samconfig.toml")], capture_output=True, text=True, check=True
    )
    parsed: dict[str, dict[str, str]] = json.loads(result.stdout)
    return parsed


def test_samconfig_has_a_default_and_a_production_environment() -> None:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    assert {"default", "production"} <= set(config)
    production = config["production"]["deploy"]["parameters"]
    assert production["confirm_changeset"] is True
    assert "CAPABILITY_IAM" in production["capabilities"]
    # The default (first) deploy keeps the schedule off.
    assert "ScheduleState=DISABLED" in config["default"]["deploy"]["parameters"]["parameter_overrides"]


def test_samconfig_parameters_are_accepted_by_the_template() -> None:
    # Given every parameter samconfig.toml passes, as SAM CLI parses them
    parameters = load_sam_template()["Parameters"]
    for environment, overrides in _samconfig_overrides().items():
        for name, value in overrides.items():
            # Then each one exists and satisfies its AllowedValues / AllowedPattern / bounds
            assert name in parameters, f"{environment}: unknown parameter {name}"
            spec = parameters[name]
            if "AllowedValues" in spec:
                assert value in [str(v) for v in spec["AllowedValues"]], (environment, name, value)
            if "AllowedPattern" in spec:
                assert re.fullmatch(spec["AllowedPattern"], value), (environment, name, value)
            if spec["Type"] == "Number":
                assert spec.get("MinValue", float("-inf")) <= float(value) <= spec.get("MaxValue", float("inf"))
        # And every parameter without a default is given
        required = {name for name, spec in parameters.items() if "Default" not in spec}
        assert required <= set(overrides), f"{environment}: missing {required - set(overrides)}"


def test_parameter_defaults_satisfy_their_own_constraints() -> None:
    for name, spec in load_sam_template()["Parameters"].items():
        if "Default" not in spec:
            continue
        default = str(spec["Default"])
        if "AllowedPattern" in spec:
            assert re.fullmatch(spec["AllowedPattern"], default), name
        if "AllowedValues" in spec:
            assert default in [str(v) for v in spec["AllowedValues"]], name
