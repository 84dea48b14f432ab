"""The ``embedstream`` command (console script ``pipeline.cli:main``).

:mod:`~pipeline.cli.app` holds the app, its exit codes and settings; the command modules
register their commands on it as they are imported, and ``embedstream --help`` lists the
commands in that order: the embedded mode's, the Kafka daemons', the index versions', then
``config``. Options are declared in :mod:`~pipeline.cli.options` and
:mod:`~pipeline.cli.sources`, output is in :mod:`~pipeline.cli.render`.
"""

# isort: off
from pipeline.cli import local
from pipeline.cli import daemons, versions, dlq, verify, tune  # noqa: F401 -- they register their commands

# isort: on
from pipeline.cli.app import (
    EXIT_CONFIG,
    EXIT_DRAIN_TIMEOUT,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STORE_LOCKED,
    EXIT_TERMINATED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    app,
    command,
    main,
)

app.command("config")(local.show_config)

__all__ = [
    "EXIT_CONFIG",
    "EXIT_DRAIN_TIMEOUT",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_STORE_LOCKED",
    "EXIT_TERMINATED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "app",
    "command",
    "main",
]
