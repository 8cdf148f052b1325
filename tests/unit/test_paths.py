"""Paths are paths: every character a file system allows names the file it spells, in INPUT, in OUTPUT,
in a row's ``path`` and in a label; listing follows links once and records what it cannot use."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import real_images

from fruitlens.images import label_and_split
from fruitlens.state import layout, ledger
from fruitlens.state.ledger import SourceFile
from fruitlens.state.manifest import (
    ForeignFilesError,
    OutputExistsError,
    check_reusable,
    clear,
)
from fruitlens.storage import uris
from fruitlens.storage.listing import list_images
from fruitlens.storage.store import Store

#: Names a Linux file system allows that URL parsing, shells, globbing or JSON treat specially.
SPECIAL = ["a#b", "100%25 juice", "pct%41b", "in%20x", "q?x=1&y", "sp ace", "Orange ü 2", "日本", "it's",
           'say "hi"', "br[1]", "cu{a,b}", "st*r", "back\\slash", "co:lon", "semi;colon", "$HOME", "~tilde",
           "tab\tname", "new\nline", "+plus", "-dash", "%", "%%", "%2F", "a%23b", "emoji 🍎"]


@pytest.fixture(scope="module")
def photo() -> bytes:
    return real_images(per_class=1, classes=1)[0].read_bytes()


@pytest.mark.parametrize("name", SPECIAL)
def test_a_local_path_is_taken_literally_from_argument_to_row_to_label(name, tmp_path, photo, monkeypatch):
    folder = tmp_path / f"in {name}" / "Test" / name
    folder.mkdir(parents=True)
    (folder / f"{name}.jpg").write_bytes(photo)
    root = tmp_path / f"in {name}"
    monkeypatch.chdir(tmp_path)
    for arg in (str(root), f"in {name}", "file://" + str(root), "file:" + str(root)):
        uri = uris.qualify(arg)
        store = Store(uri)
        assert store.root == str(root), arg
        assert store.exists(), arg
    [entry] = list_images(Store(uris.qualify(str(root))))
    assert entry.path == str(folder / f"{name}.jpg") and entry.problem is None
    row_path = store.spark_path(entry.path)
    assert row_path == f"file:{folder}/{name}.jpg"
    assert store.path_of(row_path) == entry.path == uris.local_path(row_path)
    assert store.read_bytes(store.path_of(row_path)) == photo
    assert label_and_split(row_path) == (name, "Test")


@pytest.mark.parametrize("name", SPECIAL)
def test_an_output_named_with_special_characters_is_that_folder_and_no_other(name, tmp_path):
    """`…/victim#new` was written into `…/victim/`: a `#` began a URL fragment."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    target = tmp_path / f"victim{name}"
    out = Store(uris.qualify(str(target)))
    out.make_dirs("_fruitlens")
    out.write_text("manifest.json", "{}")
    assert (target / "manifest.json").read_text() == "{}"
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]


def test_s3_uris_are_split_once_and_literally():
    loc = uris.parse("s3a://bucket/in#1/100%25 juice/x?.jpg")
    assert (loc.scheme, loc.authority, loc.path) == ("s3a", "bucket", "in#1/100%25 juice/x?.jpg")
    assert uris.qualify("s3://bucket/a b#c/") == "s3://bucket/a b#c"
    assert uris.qualify("s3://bucket/") == "s3://bucket"
    assert label_and_split("s3a://bucket/in#1/Training/100%25 juice/x.jpg") == ("100%25 juice", "Training")


@pytest.mark.parametrize("arg, local", [("a:b", True), ("dir/x:y", True), ("file:/x", False), ("s3://b/k", False),
                                        ("file:///x", False), ("./s3://b", True)])
def test_only_a_scheme_and_slashes_make_a_uri(arg, local):
    assert uris.has_scheme(arg) is not local


@pytest.mark.parametrize("arg, message", [
    ("hdfs://nn/x", "hdfs:// is not supported"),
    ("gs://b/x", "gs:// is not supported"),
    ("s3://", "names a bucket"),
    ("file://host/x", "looks like a host name"),
    ("in\udcff", "not valid UTF-8"),  # bytes that are not UTF-8, as Python decodes argv
])
def test_unusable_uris_are_refused_in_one_line_exit_2(arg, message):
    with pytest.raises(uris.PathError, match=message) as info:
        Store(uris.qualify(arg))
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


def test_spark_reads_get_glob_characters_escaped_and_nothing_else():
    assert uris.spark_read_path("file:///o/a#b %41/out[1]?{x,y}*\\/features") == \
        "file:///o/a#b %41/out\\[1\\]\\?\\{x,y\\}\\*\\\\/features"
    assert uris.spark_read_path("s3a://b/k[1]") == "s3a://b/k\\[1\\]"


def test_names_that_are_not_utf8_are_shown_with_their_bytes_escaped():
    assert uris.escape(os.fsdecode(b"/in/\xff\xfe.jpg")) == "/in/\\xff\\xfe.jpg"
    assert uris.escape("new\nline ü") == "new\\nline ü"


# -- listing ---------------------------------------------------------------------------------------------

def _tree(root: Path, photo: bytes, n: int = 3) -> None:
    for cls in ("A", "B"):
        (root / "Test" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / "Test" / cls / f"{i}.jpg").write_bytes(photo)


def test_a_directory_symlink_loop_is_one_error_row_not_forty_levels(tmp_path, photo):
    root = tmp_path / "in"
    _tree(root, photo)
    (root / "Test" / "A" / "loop").symlink_to("../..")  # A/loop -> in/ : a loop
    (root / "Test" / "B" / "self").symlink_to(".")
    entries = list_images(Store(uris.qualify(str(root))))
    good = sorted(e.path for e in entries if e.problem is None)
    assert good == sorted(str(root / "Test" / c / f"{i}.jpg") for c in "AB" for i in range(3))
    problems = {e.path: e.problem for e in entries if e.problem}
    assert set(problems) == {str(root / "Test" / "A" / "loop"), str(root / "Test" / "B" / "self")}
    assert "symbolic link loop" in problems[str(root / "Test" / "A" / "loop")]
    assert str(root) in problems[str(root / "Test" / "A" / "loop")]


def test_a_directory_symlink_is_followed_once(tmp_path, photo):
    root = tmp_path / "in"
    _tree(root, photo)
    elsewhere = tmp_path / "elsewhere" / "C"
    elsewhere.mkdir(parents=True)
    (elsewhere / "c.jpg").write_bytes(photo)
    (root / "Test" / "C").symlink_to(elsewhere)
    (root / "Test" / "A again").symlink_to(root / "Test" / "A")  # not a loop: the same folder twice
    entries = list_images(Store(uris.qualify(str(root))))
    assert all(e.problem is None for e in entries)
    paths = {e.path for e in entries}
    assert str(root / "Test" / "C" / "c.jpg") in paths
    assert {str(root / "Test" / "A again" / f"{i}.jpg") for i in range(3)} <= paths
    assert len(entries) == 10


def test_dangling_and_looping_image_links_are_error_rows_naming_the_path(tmp_path, photo):
    root = tmp_path / "in"
    _tree(root, photo)
    (root / "Test" / "A" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "Test" / "A" / "me.jpg").symlink_to("me.jpg")
    (root / "Test" / "A" / "ok.jpg").symlink_to(root / "Test" / "B" / "0.jpg")
    (root / "Test" / "A" / "gone.txt").symlink_to(tmp_path / "nowhere.txt")  # not an image: not listed
    entries = {e.path: e for e in list_images(Store(uris.qualify(str(root))))}
    gone, me, ok = (entries[str(root / "Test" / "A" / n)] for n in ("gone.jpg", "me.jpg", "ok.jpg"))
    assert "broken symbolic link" in gone.problem and "nowhere.jpg" in gone.problem
    assert "symbolic link loop" in me.problem
    assert ok.problem is None and ok.size == len(photo)  # a link that works is the file it names
    assert str(root / "Test" / "A" / "gone.txt") not in entries


def test_a_name_that_is_not_utf8_is_an_error_row_with_the_bytes_escaped(tmp_path, photo):
    root = tmp_path / "in"
    _tree(root, photo)
    bad_dir = os.fsencode(root / "Test") + b"/caf\xe9"
    os.mkdir(bad_dir)
    with open(os.fsencode(root / "Test" / "A") + b"/\xff.jpg", "wb") as fh:
        fh.write(photo)
    with open(bad_dir + b"/x.jpg", "wb") as fh:
        fh.write(photo)
    entries = list_images(Store(uris.qualify(str(root))))
    problems = {e.path: e.problem for e in entries if e.problem}
    assert set(problems) == {f"{root}/Test/A/\\xff.jpg", f"{root}/Test/caf\\xe9/x.jpg"}
    assert all("not valid UTF-8" in p for p in problems.values())
    assert sum(1 for e in entries if e.problem is None) == 6
    for path in problems:  # a valid Parquet string, unlike the raw name
        path.encode("utf-8")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_a_folder_that_cannot_be_listed_is_an_error_row(tmp_path, photo):
    root = tmp_path / "in"
    _tree(root, photo)
    (root / "Test" / "B").chmod(0)
    try:
        entries = list_images(Store(uris.qualify(str(root))))
    finally:
        (root / "Test" / "B").chmod(0o755)
    problems = {e.path: e.problem for e in entries if e.problem}
    assert problems == {str(root / "Test" / "B"): "cannot list this folder: Permission denied"}


def test_hidden_names_are_skipped_as_spark_skips_them(tmp_path, photo):
    root = tmp_path / "in"
    _tree(root, photo, n=1)
    for hidden in (".cache/x.jpg", "_tmp/x.jpg", "Test/A/.x.jpg", "Test/A/_x.jpg"):
        (root / hidden).parent.mkdir(parents=True, exist_ok=True)
        (root / hidden).write_bytes(photo)
    (root / "k=1").mkdir()
    (root / "k=1" / "x.jpg").write_bytes(photo)
    assert sorted(e.path for e in list_images(Store(uris.qualify(str(root))))) == sorted(
        [str(root / "Test" / "A" / "0.jpg"), str(root / "Test" / "B" / "0.jpg"), str(root / "k=1" / "x.jpg")])


def test_listing_problems_are_committed_as_error_rows_the_ledger_keeps(tmp_path):
    out = Store(uris.qualify(str(tmp_path / "out")))
    out.make_dirs(layout.ERRORS)
    files = [SourceFile("file:/in/A/\\xff.jpg", 10, 5, "the file name is not valid UTF-8"),
             SourceFile("file:/in/A/loop", 0, 6, "symbolic link loop"),
             SourceFile("file:/in/B", 0, 7, "cannot list this folder: Permission denied")]
    assert ledger.commit_listing_errors(out, files) == (3, 1)
    [table] = [pq.read_table(p) for p in (tmp_path / "out" / "errors").iterdir()]
    assert table.to_pylist()[0]["path"] == "file:/in/A/\\xff.jpg"
    assert table.column("kind").to_pylist() == ["decode", "decode", "read"]
    plan = ledger.plan(ledger.read_index(out), files)  # the next run: unchanged, so reused; unlistable: again
    assert [f.path for f in plan.todo] == ["file:/in/B"] and plan.reused == 2 and plan.retried == 1


# -- --overwrite deletes only what fruitlens wrote --------------------------------------------------------

def _fruitlens_output(root: Path) -> None:
    for rel in ("_fruitlens/settings.json", "features/part-1.parquet", "errors/part-1.parquet", "manifest.json",
                "pca/part-0.parquet", "report/index.html", ".manifest.json.tmp-1-ab"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")


def test_overwrite_refuses_an_output_holding_other_files_and_deletes_none(tmp_path):
    out_dir = tmp_path / "out"
    _fruitlens_output(out_dir)
    (out_dir / "notes.txt").write_text("mine")
    (out_dir / "photos").mkdir()
    (out_dir / "photos" / "a.jpg").write_text("mine")
    before = sorted(p for p in out_dir.rglob("*"))
    out = Store(uris.qualify(str(out_dir)))
    refused = r"holds files fruitlens did not write \('notes.txt', 'photos'\)"
    with pytest.raises(ForeignFilesError, match=refused) as info:
        check_reusable(out, "file:///in", overwrite=True)
    assert info.value.exit_code == 2
    clear(out)  # even if called, only fruitlens's own entries go
    assert sorted(p.name for p in out_dir.iterdir()) == ["_fruitlens", "notes.txt", "photos"]
    assert (out_dir / "photos" / "a.jpg").read_text() == "mine" and len(before) > 3


def test_overwrite_refuses_a_folder_that_is_not_a_fruitlens_output_at_all(tmp_path):
    out_dir = tmp_path / "out"
    (out_dir / "features").mkdir(parents=True)  # someone else's folder of that name, no _fruitlens/
    (out_dir / "features" / "x.parquet").write_text("theirs")
    with pytest.raises(ForeignFilesError, match="'features'"):
        check_reusable(Store(uris.qualify(str(out_dir))), "file:///in", overwrite=True)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(OutputExistsError, match="file.txt"):
        check_reusable(Store(uris.qualify(str(a_file))), "file:///in", overwrite=True)


def test_overwrite_of_a_fruitlens_output_clears_it_but_the_lock(tmp_path):
    out_dir = tmp_path / "out"
    _fruitlens_output(out_dir)
    (out_dir / "_fruitlens" / "lock.json").write_text("{}")
    out = Store(uris.qualify(str(out_dir)))
    check_reusable(out, "file:///in", overwrite=True)
    clear(out)
    assert [str(p.relative_to(out_dir)) for p in out_dir.rglob("*")] == ["_fruitlens", "_fruitlens/lock.json"]
    shutil.rmtree(out_dir)
    check_reusable(out, "file:///in", overwrite=True)  # a missing OUTPUT is fine
