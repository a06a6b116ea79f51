"""Put on PYTHONPATH of a process started by a test: its Django clock runs
CORRAL_TEST_CLOCK_OFFSET_S seconds off (a worker host whose clock is wrong). Only the
process's own idea of the time moves; the database's clock does not."""

import os

_offset = float(os.environ.get("CORRAL_TEST_CLOCK_OFFSET_S", "0") or 0)

if _offset:
    import datetime as _datetime

    from django.utils import timezone as _timezone

    _real_now = _timezone.now

    def _skewed_now() -> _datetime.datetime:
        return _real_now() + _datetime.timedelta(seconds=_offset)

    _timezone.now = _skewed_now
