"""How a worker's errors reach the user: bad input in plain words, bugs with their traceback."""

from __future__ import annotations

from napari.utils.notifications import show_error

from napari_unet_tuner.errors import UnetTunerError

# Errors the user can fix (this package's own, and files that cannot be read
# or written): a notification says what to do; a traceback would only scare.
EXPECTED_ERRORS = (UnetTunerError, OSError)


def report_errors_plainly(worker) -> None:
    """Show ``worker``'s expected errors as plain notifications; others as napari does.

    napari relays every worker error to its notifications with the traceback
    (also printed in the terminal). Create the worker with
    ``_ignore_errors=True`` so that it is not also re-raised on the GUI thread.
    """
    relay = getattr(worker, "_relay_error", None)
    if relay is not None:
        try:
            worker.errored.disconnect(relay)
        except (TypeError, RuntimeError):
            pass  # not connected to this worker: nothing to take over

    def on_error(exc: Exception) -> None:
        if isinstance(exc, EXPECTED_ERRORS):
            show_error(str(exc))
        elif relay is not None:
            relay(exc)
        else:
            raise exc

    worker.errored.connect(on_error)
