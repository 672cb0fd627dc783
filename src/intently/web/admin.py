"""(being written)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from intently.engine import Engine


def routes(engine: Engine) -> list[BaseRoute]:
    return []
