"""The errors fmjax reports as one line and a non-zero exit (see fmjax/main.py).

`ConfigError` is a mistake the user can fix (config, data, mesh, workdir, checkpoint input):
exit 2, nothing in the workdir overwritten. `RunFailure` is the run failing at run time for a
reason outside the config (disk full, a non-finite halt): exit 1, the last good checkpoint kept.
"""


class FmjaxError(Exception):
    """An error fmjax prints as one line (no traceback) before exiting non-zero."""

    exit_code = 1


class ConfigError(FmjaxError, ValueError):
    """A mistake in the user's config, data, mesh, workdir or checkpoint input: exit 2."""

    exit_code = 2


class RunFailure(FmjaxError, RuntimeError):
    """The run failed while running (disk full, non-finite halt): exit 1, good work kept."""

    exit_code = 1
