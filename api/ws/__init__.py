"""placeholder"""


def route_handlers():
    return []
