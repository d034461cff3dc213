"""Command line: python -m fmjax.main --config experiments/bert_tiny.py --workdir runs/x.

Modes: train (default; resumes from the workdir's latest checkpoint), eval (latest
checkpoint on the held-out data), compile (AOT-compile the train step for the configured mesh
and report per-device memory and FLOPs, allocating nothing), generate (continue
config.generate.prompt with the latest checkpoint of a causal LM), prepare (prepare the
configured data into data.data_dir and exit, e.g. on a CPU machine before a big run).
"""

from __future__ import annotations

import ast
import os
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment file, optionally with a preset: path.py or path.py:preset.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, config).")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval", "compile", "generate", "prepare"], "What to do."
)


def _fail(message: str, code: int = 2) -> None:
    print(f"fmjax: error: {message}", file=sys.stderr)
    _exit(code)


def _multi_process() -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and jax.distributed.is_initialized()


def _exit(code: int) -> None:
    """Exits; in a multi-process job at once, without JAX's shutdown barrier, which would wait
    for the other processes (the launcher or the coordinator's heartbeat stops those)."""
    if _multi_process():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _one_line(error: Exception) -> str:
    """The flag error's first line plus, for a failing experiment file, its final exception."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return repr(error)
    if any(line.startswith("Traceback") for line in lines):
        return f"{lines[0].split(': ')[0]}: {lines[-1]}"
    return lines[0]


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with every mistake reported as one line (no usage dump)."""
    path = _config_path(argv)
    if path is not None and not os.path.isfile(path.split(":", 1)[0]):
        _fail(f"config file {path.split(':', 1)[0]} not found; pass an experiments/*.py file")
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        _fail(_one_line(error))
    except (AttributeError, KeyError) as error:  # an override of a field that does not exist
        text = str(error)
        if text[:1] in "'\"" and text[-1:] == text[:1]:
            text = ast.literal_eval(text)
        _fail("unknown config field " + " ".join(text.split()))
    except Exception as error:  # noqa: BLE001 - a broken experiment file or preset
        _fail(f"could not load the config: {type(error).__name__}: {error}")
    return []


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)  # Orbax and absl info logs would bury the progress bar
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; options look like --config.train.num_steps=10")
    if _CONFIG.value is None:
        _fail("--config is required, e.g. --config experiments/bert_tiny.py")
    if not _WORKDIR.value and _MODE.value != "prepare":
        _fail("--workdir is required, e.g. --workdir runs/bert_tiny")

    from fmjax.config import apply_compilation_cache
    from fmjax.errors import FmjaxError
    from fmjax.parallel.distributed import initialize_distributed

    try:  # before anything starts a JAX backend
        initialize_distributed(_CONFIG.value)
    except FmjaxError as error:
        _fail(str(error), error.exit_code)
    apply_compilation_cache(_CONFIG.value)  # before the first compilation

    from fmjax.data.prepare_mode import prepare
    from fmjax.train import generate, trainer

    run = {
        "train": trainer.train,
        "eval": trainer.evaluate,
        "compile": trainer.compile_report,
        "generate": generate.generate,
        "prepare": prepare,
    }
    try:
        run[_MODE.value](_CONFIG.value, _WORKDIR.value)
    except FmjaxError as error:
        _fail(str(error), error.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; re-run the same command to resume from the latest checkpoint")
    except Exception:
        if not _multi_process():
            raise
        traceback.print_exc()
        _exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
