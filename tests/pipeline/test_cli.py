"""The stage edge: a user's mistake is one line and exit code 2; a bug keeps its traceback."""

from __future__ import annotations

import pytest

from ddpm.errors import CheckpointError, ConfigError, DataError, UserError
from ddpm.pipeline.stage import run_stage, stage_parser


def run(body, hints=None) -> int:
    return run_stage("demo", lambda args: body(), stage_parser("demo"), [], hints=hints)


def test_a_user_error_is_one_line_with_exit_code_2(capsys):
    def body():
        raise ConfigError("train.lr=-1.0 is not accepted; expected a number in (0, 1)")

    assert run(body) == 2
    err = capsys.readouterr().err
    assert err == "demo: error: train.lr=-1.0 is not accepted; expected a number in (0, 1)\n"


def test_the_stage_adds_its_pipeline_hint_to_the_matching_error(capsys):
    def body():
        raise CheckpointError("checkpoint 'models/model.pt' does not exist")

    hints = {DataError: "not this one", CheckpointError: "`dvc repro train` writes it"}
    assert run(body, hints) == 2
    assert capsys.readouterr().err.splitlines() == ["demo: error: checkpoint 'models/model.pt' does not exist",
                                                    "demo: hint: `dvc repro train` writes it"]


@pytest.mark.parametrize("error", [ValueError("math went wrong"), FileNotFoundError("no such file"),
                                   ZeroDivisionError("division by zero")])
def test_any_other_error_is_not_taken_for_a_user_error(error):
    # The old edge printed every ValueError and FileNotFoundError as a one-line "user error".
    def body():
        raise error

    with pytest.raises(type(error)):
        run(body)


def test_every_project_error_is_a_user_error():
    from ddpm import errors

    kinds = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert len(kinds) >= 8 and all(issubclass(k, UserError) for k in kinds)
