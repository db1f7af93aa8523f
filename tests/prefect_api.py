"""The in-process flows' Prefect test API: Prefect's own test harness (a server process on a fresh
SQLite database), entered in a thread of its own as soon as tests that need it are collected, so its
~10 s start overlaps the tests before them. The harness makes its settings the process-global ones,
which this process's tests then see; the thread holds it open until the session ends.

Its server records no task runs (its TaskRunRecorder service is off): nothing in-process reads them
back (the operations tests, which do, run against their own `prefect server start`), and on SQLite
the recorder's writes slowed every flow and now and then held the database for its 60 s
busy timeout, stalling the flow that was waiting on the API.
"""
from __future__ import annotations

import threading


class BackgroundHarness:
    def __init__(self):
        self._ready, self._leave = threading.Event(), threading.Event()
        self._error: BaseException | None = None
        self._url: str | None = None
        self._thread = threading.Thread(target=self._hold, name="prefect-test-api", daemon=True)

    def start(self) -> BackgroundHarness:
        self._thread.start()
        return self

    def _hold(self) -> None:
        import prefect.settings
        from prefect.testing.utilities import prefect_test_harness

        recorder = prefect.settings.PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED
        try:  # the setting reaches the server process through the harness's settings, not os.environ
            with prefect.settings.temporary_settings(updates={recorder: False}), \
                    prefect_test_harness(server_startup_timeout=120):
                self._url = prefect.settings.PREFECT_API_URL.value()
                self._ready.set()
                self._leave.wait()
        except BaseException as err:  # raised where the API is needed
            self._error = err
        finally:
            self._ready.set()

    def wait(self) -> str:
        """The API's address, once it is up."""
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError("the Prefect test API did not start") from self._error
        return self._url

    def stop(self) -> None:
        self._leave.set()
        self._thread.join(timeout=60)
