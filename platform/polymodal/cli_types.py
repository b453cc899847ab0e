"""argparse types of the `polymodal` command's flags: numbers refused at parse time, naming the
flag, when out of range."""

from __future__ import annotations

import argparse


def number(kind: type, low: float, high: float | None = None, above: bool = False):
    """An argparse type: an int or float in [low, high) ((low, high) with above), so that a
    count of 0 is refused at once, naming the flag, and not by Ray minutes later."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}"
            ) from None
        if value < low or (above and value == low) or (high is not None and value >= high):
            bound = f"> {low:g}" if above else f">= {low:g}"
            bound += f" and < {high:g}" if high is not None else ""
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
