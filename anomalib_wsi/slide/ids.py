"""Slide ids, and per-slide output folders proven to stay inside the output folder.

A slide's id is its file name without the extension (``tumor_001.tif`` -> ``tumor_001``), and its outputs go to
``<output>/<slide_id>/``. Some stems cannot be a folder name there: the file ``...tif`` has the stem ``..``, whose
outputs would land in the parent of the output folder (and clearing them would delete the user's files there);
``..tif`` has the stem ``.``, the output folder itself. Such ids are **refused, never rewritten**: an escaped or
hashed id would make the outputs, the run tables and the evaluation's ``<predictions>/<slide_id>/`` disagree with
the name the user sees, and no real slide is named like this. The refusal is one line naming the file and the
fix (rename it), and the run goes on with the other slides.

Refused (:func:`check_slide_id`):

- the empty id, an id of only spaces, ``.`` and ``..``;
- ids holding a path separator (``/``, ``\\``) or NUL;
- control characters (``\\n``, ``\\t``, escape, DEL, C1 controls), line and paragraph separators (U+2028/9), which
  would break one-line messages and CSV rows, and lone surrogates (a file name that is not valid UTF-8), which no
  UTF-8 CSV can hold;
- ids longer than 255 bytes in UTF-8 (no file system holds such a folder name).

Everything else is kept as it is, spaces, unicode and punctuation included.

Example:
    >>> slide_id = slide_id_from_path("slides/tumor_001.tif")        # "tumor_001"
    >>> folder = slide_output_dir("out", slide_id, create=True)       # out/tumor_001, created
    >>> slide_id_from_path("slides/...tif")                            # doctest: +SKIP
    WSIError: slides/...tif: slide id '..' cannot name a folder (it is '..': the outputs would go to the parent
    of the output folder); rename the slide file (its id is the file name without the extension)
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from anomalib_wsi.errors import WSIError

__all__ = ["MAX_SLIDE_ID_BYTES", "check_slide_id", "printable", "slide_id_from_path", "slide_output_dir"]

#: Longest slide id in UTF-8 bytes (a folder name; NAME_MAX of common file systems).
MAX_SLIDE_ID_BYTES = 255

#: Unicode categories refused in slide ids: controls, surrogates, line / paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})

_RENAME = "rename the slide file (its id is the file name without the extension)"


def _unsafe_char(char: str) -> bool:
    return unicodedata.category(char) in _REFUSED_CATEGORIES


def printable(text: str | Path) -> str:
    """``text`` with control characters, separators and surrogates backslash-escaped: safe in one-line messages
    and CSV cells. Text without them is returned unchanged.

    Example:
        >>> printable("a\\nb")
        'a\\\\nb'
    """
    text = str(text)
    if not any(_unsafe_char(char) for char in text):
        return text
    return "".join(
        char.encode("unicode_escape", "backslashreplace").decode("ascii") if _unsafe_char(char) else char
        for char in text
    )


def _problem(slide_id: str) -> str | None:
    """Why ``slide_id`` cannot name a folder, or None when it can."""
    if not slide_id.strip():
        return "it is empty" if not slide_id else "it is only spaces"
    if slide_id in (".", ".."):
        where = "the output folder itself" if slide_id == "." else "the parent of the output folder"
        return f"it is {slide_id!r}: the outputs would go to {where}"
    if "/" in slide_id or "\\" in slide_id:
        return "it holds a path separator"
    if "\0" in slide_id:
        return "it holds a NUL character"
    if any(unicodedata.category(char) == "Cs" for char in slide_id):
        return "the file name is not valid UTF-8"
    if any(_unsafe_char(char) for char in slide_id):
        return "it holds a control character or line break"
    if len(slide_id.encode("utf-8")) > MAX_SLIDE_ID_BYTES:
        return f"it is longer than {MAX_SLIDE_ID_BYTES} bytes"
    return None


def check_slide_id(slide_id: str, source: str | Path | None = None, fix: str = _RENAME) -> str:
    """``slide_id`` unchanged when it can name a folder inside the output folder; a one-line WSIError otherwise.

    Args:
        slide_id: the id (usually a slide file's stem; a manifest may give one).
        source: what the id came from (the slide file, a manifest row), named first in the message.
        fix: what the user should do, ending the message (default: rename the slide file).

    Returns:
        ``slide_id``.

    Raises:
        WSIError: the id is empty, ``.`` or ``..``, holds a separator, NUL, a control character or a lone
            surrogate, or is longer than :data:`MAX_SLIDE_ID_BYTES` (see the module docstring).
    """
    if not isinstance(slide_id, str):
        msg = f"{printable(source or slide_id)}: slide id must be text, got {type(slide_id).__name__}; {fix}"
        raise WSIError(msg)
    problem = _problem(slide_id)
    if problem is None:
        return slide_id
    where = f"{printable(source)}: " if source is not None else ""
    msg = f"{where}slide id {printable(slide_id)!r} cannot name a folder ({problem}); {fix}"
    raise WSIError(msg)


def slide_id_from_path(path: str | Path) -> str:
    """The slide id of a slide file, its name without the extension, checked by :func:`check_slide_id`.

    Raises:
        WSIError: the stem cannot name a folder (``...tif`` has the stem ``..``); the message names the file.
    """
    path = Path(path)
    return check_slide_id(path.stem, source=path)


def slide_output_dir(
    output_dir: str | Path, slide_id: str, source: str | Path | None = None, create: bool = False
) -> Path:
    """``<output_dir>/<slide_id>``, proven to stay inside ``output_dir``: the only way to name a slide's folder.

    The id is checked (:func:`check_slide_id`); then the folder, symbolic links followed, must resolve to a
    folder strictly inside the resolved output folder (a link ``<output>/<slide_id>`` to elsewhere is refused),
    and must be a folder or not exist yet (a file of that name is refused). Everything the slide writes or
    clears belongs under the returned path.

    Args:
        output_dir: the run's output folder (need not exist unless ``create``).
        slide_id: the slide's id.
        source: what the id came from, named in messages (e.g. the slide file).
        create: create the folder (and the output folder) when missing.

    Returns:
        ``Path(output_dir) / slide_id``, as given (not resolved), so messages show the user's own path.

    Raises:
        WSIError: an id that cannot name a folder, a folder that leaves ``output_dir``, a file in its place, or a
            folder that cannot be created; one line naming the path and the fix.
    """
    check_slide_id(slide_id, source=source)
    root = Path(output_dir)
    folder = root / slide_id
    try:
        resolved_root = root.resolve()
        resolved = folder.resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symbolic link loop (Python < 3.13)
        msg = (
            f"{printable(folder)}: cannot resolve the slide's output folder ({printable(str(err))}); fix the links "
            "or choose another output folder"
        )
        raise WSIError(msg) from None
    if resolved == resolved_root or resolved_root not in resolved.parents:
        msg = (
            f"{printable(folder)}: the slide's output folder leads to {printable(resolved)}, outside the output folder "
            f"{printable(resolved_root)}; remove that link or choose another output folder"
        )
        raise WSIError(msg)
    if folder.exists() and not folder.is_dir():
        msg = (
            f"{printable(folder)}: a file is in the place of the slide's output folder; move it away or choose "
            "another output folder"
        )
        raise WSIError(msg)
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            msg = (
                f"{printable(folder)}: cannot create the slide's output folder ({err.strerror}); check the "
                "permissions and the free space"
            )
            raise WSIError(msg) from None
    return folder
