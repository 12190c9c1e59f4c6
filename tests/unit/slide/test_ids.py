"""Slide ids that can name a folder, and per-slide output folders that cannot leave the output folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomalib_wsi.errors import WSIError
from anomalib_wsi.slide.ids import check_slide_id, printable, slide_id_from_path, slide_output_dir


@pytest.mark.parametrize(
    "slide_id",
    ["tumor_001", "001", "Test 001 (rescan)", "...", ".hidden", "-x", "Färbung_µ", "a.b.c", "x" * 255, "=SUM(A1)"],
)
def test_ordinary_ids_are_kept_as_they_are(slide_id: str) -> None:
    """Spaces, unicode, dots inside, ``...`` and a leading dash all name a folder: the id is returned unchanged."""
    assert check_slide_id(slide_id) == slide_id


@pytest.mark.parametrize(
    ("slide_id", "reason"),
    [
        ("", "it is empty"),
        ("   ", "it is only spaces"),
        (".", "it is '.': the outputs would go to the output folder itself"),
        ("..", "it is '..': the outputs would go to the parent of the output folder"),
        ("a/b", "it holds a path separator"),
        ("a\\b", "it holds a path separator"),
        ("a\0b", "it holds a NUL character"),
        ("a\nb", "it holds a control character or line break"),
        ("a\x1b[31mb", "it holds a control character or line break"),
        ("a\x7fb", "it holds a control character or line break"),
        ("a\u2028b", "it holds a control character or line break"),
        ("a\udcffb", "the file name is not valid UTF-8"),
        ("é" * 128, "it is longer than 255 bytes"),
    ],
)
def test_ids_that_cannot_name_a_folder_are_refused_in_one_line(slide_id: str, reason: str) -> None:
    """Each refusal names the source, the id (escaped), the reason and the fix, on one line."""
    with pytest.raises(WSIError) as info:
        check_slide_id(slide_id, source="slides/x.tif")
    message = str(info.value)
    assert message == (
        f"slides/x.tif: slide id {printable(slide_id)!r} cannot name a folder ({reason}); rename the slide file "
        "(its id is the file name without the extension)"
    )
    assert len(message.splitlines()) == 1
    message.encode("utf-8")  # no lone surrogate left: any log or CSV can hold it


def test_slide_id_from_path_is_the_checked_stem() -> None:
    """``tumor_001.tif`` -> ``tumor_001``; ``...tif`` (stem ``..``) and ``..tif`` (stem ``.``) are refused."""
    assert slide_id_from_path("slides/tumor_001.tif") == "tumor_001"
    assert slide_id_from_path("....tif") == "..."
    with pytest.raises(WSIError, match=r"^slides/\.\.\.tif: slide id '\.\.' cannot name a folder"):
        slide_id_from_path("slides/...tif")
    with pytest.raises(WSIError, match=r"^\.\.tif: slide id '\.' cannot name a folder"):
        slide_id_from_path("..tif")


def test_printable_escapes_only_what_breaks_a_line() -> None:
    assert printable("tumor_001 µ é") == "tumor_001 µ é"
    assert printable("a\nb\tc\x1b\udcff") == "a\\nb\\tc\\x1b\\udcff"
    assert printable(Path("x\ny")) == "x\\ny"


def test_slide_output_dir_stays_inside_the_output_folder(tmp_path: Path) -> None:
    """The folder is ``<output>/<slide_id>`` as given; created on request (with the output folder)."""
    out = tmp_path / "out"
    assert slide_output_dir(out, "s1") == out / "s1"
    assert not out.exists()
    assert slide_output_dir(out, "s1", create=True) == out / "s1"
    assert (out / "s1").is_dir()
    with pytest.raises(WSIError, match=r"slide id '\.\.' cannot name a folder"):
        slide_output_dir(out, "..")


def test_slide_output_dir_refuses_links_out_and_files_in_the_way(tmp_path: Path) -> None:
    """A link ``<output>/<id>`` to elsewhere (or to the output folder itself) is refused; a link to a folder inside
    the output folder is followed; a file of the slide's name is refused; nothing is created or removed."""
    out = tmp_path / "out"
    (out / "inside").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "away").symlink_to(elsewhere)
    (out / "self").symlink_to(out)
    (out / "alias").symlink_to(out / "inside")
    (out / "loop").symlink_to(out / "loop")
    (out / "file").write_text("in the way")
    for slide_id, target in (("away", elsewhere), ("self", out)):
        with pytest.raises(WSIError) as info:
            slide_output_dir(out, slide_id, create=True)
        assert str(info.value) == (
            f"{out / slide_id}: the slide's output folder leads to {target}, outside the output folder {out}; "
            "remove that link or choose another output folder"
        )
    assert slide_output_dir(out, "alias", create=True) == out / "alias"
    with pytest.raises(WSIError, match=r"/out/loop: cannot resolve the slide's output folder \(Symlink loop"):
        slide_output_dir(out, "loop")
    with pytest.raises(WSIError) as info:
        slide_output_dir(out, "file", create=True)
    assert str(info.value) == (
        f"{out / 'file'}: a file is in the place of the slide's output folder; move it away or choose another "
        "output folder"
    )
    assert (out / "file").read_text() == "in the way"
    assert sorted(p.name for p in elsewhere.iterdir()) == []


def test_slide_output_dir_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    """An output folder under a file: one line naming the folder and the reason."""
    (tmp_path / "plain").write_text("a file")
    with pytest.raises(WSIError) as info:
        slide_output_dir(tmp_path / "plain" / "out", "s1", create=True)
    assert str(info.value).startswith(f"{tmp_path / 'plain' / 'out' / 's1'}: ")
    assert "\n" not in str(info.value)
