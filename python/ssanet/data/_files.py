"""Reading the files of a dataset, with errors that name the file at fault."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image


class CorruptFileError(ValueError):
    """A dataset file exists but cannot be read or does not have the expected content.

    ``path`` is the file; the message names it, and the line where the problem is, if any.
    """

    def __init__(self, path: str | os.PathLike, problem: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        where = self.path if line is None else f"{self.path}, line {line}"
        super().__init__(f"{where}: {problem}")


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """Return ``path`` as a Path, or raise FileNotFoundError naming it if it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, f"missing dataset {what}", str(path))
    return path


def require_dir(path: str | os.PathLike, what: str = "folder") -> Path:
    """Return ``path`` as a Path, or raise FileNotFoundError naming it if it is not a folder."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"missing dataset {what}", str(path))
    return path


def read_table(
    path: str | os.PathLike,
    types: Sequence[Callable[[str], object]],
    rest: bool = False,
) -> list[tuple]:
    """Read a whitespace-separated text file, one record per non-empty line.

    ``types`` converts each field (``int``, ``float``, ``str``). With ``rest=True`` the last field
    takes the remainder of the line, spaces included (class names, aircraft variants). A missing
    file raises FileNotFoundError, a malformed line CorruptFileError naming the file and line.
    """
    path = require_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CorruptFileError(path, f"cannot read the file ({error})") from error
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        fields = line.split(maxsplit=len(types) - 1) if rest else line.split()
        if len(fields) != len(types):
            raise CorruptFileError(
                path, f"expected {len(types)} fields, found {len(fields)}: {line!r}", number
            )
        try:
            values = tuple(convert(field) for convert, field in zip(types, fields, strict=True))
        except ValueError as error:
            raise CorruptFileError(path, f"bad value in {line!r} ({error})", number) from error
        records.append(values)
    return records


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB, fully decoded; errors name the file."""
    path = require_file(path, "image")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise CorruptFileError(path, f"cannot decode the image ({error})") from error
