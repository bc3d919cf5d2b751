"""Entry point of the ``verl.plugins`` group: importing this module registers ``pama``.

verl imports every ``verl.plugins`` entry point when ``verl`` itself is imported, in the
driver and in every Ray worker, and logs a failure only at debug level. A failure here is
therefore reported as a warning (and a logged error) by this module itself, and swallowed
so that verl still imports; ``adv_estimator=pama`` then fails with verl's unknown-estimator
error after that warning.
"""

from __future__ import annotations

import logging
import warnings

from .patch import register


def load() -> bool:
    """Register the estimator; warn loudly instead of raising. Returns success."""
    try:
        register()
    except Exception as exc:
        message = f"paretoopt could not register verl advantage estimator 'pama': {exc}"
        logging.getLogger(__name__).error(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return False
    return True


LOADED = load()
