"""The photo-source table (frfsr_train.data.photos): consistent splits, offline scikit-image fetch,
verified and atomic archive fetches, clear errors for sources not in the cache."""
import io
import tarfile

import numpy as np
import pytest

pytest.importorskip("skimage")

from frfsr_train.data import photos as ph  # noqa: E402
from frfsr_train.data.photos import (SOURCES, PhotoNotFetched, cache_dir, fetch, heldout_photos, is_fetched,  # noqa: E402
                               load_photo, load_photos, resolve, split_of, train_photos)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FRFSR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ph, "_photo_cache", {})
    return tmp_path / "cache" / "photos"


def test_table_is_consistent():
    seen = set()
    for name, src in SOURCES.items():
        assert src.name == name
        assert not set(src.train) & set(src.heldout), f"{name}: a photo is both for training and held out"
        assert len(set(src.photos)) == len(src.photos), f"{name}: a photo is listed twice"
        assert set(src.files) == set(src.photos), f"{name}: every file is in exactly one split"
        # matplotlib ships a single photograph; every other source keeps two or more held out
        assert len(src.heldout) >= (1 if name == "matplotlib" else 2)
        for photo, pf in src.files.items():
            assert len(pf.sha256) == 64 and len(pf.shape) == 2
            assert pf.size > 0 or name == "skimage"
        qualified = {f"{name}:{p}" for p in src.photos}
        assert not qualified & seen
        seen |= qualified
    assert len(SOURCES["wallpapers"].heldout) >= 4
    assert "cat" not in SOURCES["skimage"].train                       # skimage's cat is chelsea
    hashes = [pf.sha256 for src in SOURCES.values() for pf in src.files.values()]
    assert len(set(hashes)) == len(hashes)                              # no photo under two names
    assert set(heldout_photos()) | set(train_photos()) == seen
    from frfsr_train.data.views import HELDOUT_PHOTOS, TRAIN_PHOTOS             # the old names still import
    assert TRAIN_PHOTOS == SOURCES["skimage"].train and HELDOUT_PHOTOS == SOURCES["skimage"].heldout


def test_names_resolve(tmp_path):
    assert resolve("coffee") == ("skimage", "coffee")
    assert resolve("cat") == ("skimage", "chelsea")
    assert resolve("wallpapers:Path") == ("wallpapers", "Path")
    assert resolve("matplotlib:grace_hopper") == ("matplotlib", "grace_hopper")
    assert resolve(str(tmp_path / "x.png")) == tmp_path / "x.png"
    assert split_of("coffee") == "heldout" and split_of("wallpapers:Kite") == "train"
    with pytest.raises(ValueError, match="no photo 'Nope'.*its photos"):
        resolve("wallpapers:Nope")
    with pytest.raises(ValueError, match="unknown photo source"):
        heldout_photos(["flickr"])


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("FRFSR_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "frfsr" / "photos"
    monkeypatch.setenv("FRFSR_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine" / "photos"


def test_skimage_fetch_is_offline_verified_and_idempotent(empty_cache):
    from PIL import Image
    files = fetch("skimage")
    assert {f.stem for f in files} == set(SOURCES["skimage"].photos)
    coffee = empty_cache / "skimage" / "coffee.png"
    assert np.array_equal(np.asarray(Image.open(coffee).convert("RGB")), load_photo("coffee"))
    before = coffee.stat().st_mtime_ns
    fetch("skimage")                                                     # kept, not rewritten
    assert coffee.stat().st_mtime_ns == before
    assert is_fetched("skimage")


def test_missing_sources_name_the_fetch_command(empty_cache, tmp_path):
    assert not is_fetched("wallpapers")
    with pytest.raises(PhotoNotFetched, match=r"python train/fetch_photos.py --source wallpapers"):
        load_photo("wallpapers:Path")
    with pytest.raises(PhotoNotFetched, match=r"python train/fetch_photos.py --source matplotlib.*pip install matplotlib"):
        load_photos(["coffee", "matplotlib:grace_hopper"])
    with pytest.raises(PhotoNotFetched, match="is not a file.*--source wallpapers"):
        fetch("wallpapers", archive=tmp_path / "missing.deb")
    with pytest.raises(PhotoNotFetched, match="is not a file.*--source matplotlib"):
        fetch("matplotlib", archive=tmp_path / "missing.whl")
    from frfsr_train.data.views import ViewPairDataset
    with pytest.raises(PhotoNotFetched, match="fetch_photos.py"):
        ViewPairDataset(["coffee", "wallpapers:Path"], patch=64, length=1)


def _fake_deb(path, members: dict[str, bytes]):
    """A minimal .deb (ar archive: debian-binary, control.tar.xz, data.tar.xz)."""
    def tar_xz(files):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as t:
            for name, data in files.items():
                info = tarfile.TarInfo("./" + name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    parts = [("debian-binary", b"2.0\n"), ("control.tar.xz", tar_xz({"control": b"Package: x\n"})),
             ("data.tar.xz", tar_xz(members))]
    with open(path, "wb") as f:
        f.write(b"!<arch>\n")
        for name, data in parts:
            f.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode())
            f.write(data + (b"\n" if len(data) % 2 else b""))


def test_deb_members_are_read_and_wrong_files_are_refused(empty_cache, tmp_path):
    member = SOURCES["wallpapers"].files["Path"].member
    deb = tmp_path / "fake.deb"
    _fake_deb(deb, {member: b"not the photo", "usr/share/other.txt": b"x"})
    assert ph._deb_files(deb, {member}) == {member: b"not the photo"}
    with pytest.raises(PhotoNotFetched, match="missing from the archive"):
        fetch("wallpapers", archive=deb)
    _fake_deb(deb, {pf.member: b"not the photo" for pf in SOURCES["wallpapers"].files.values()})
    with pytest.raises(PhotoNotFetched, match="not the recorded"):
        fetch("wallpapers", archive=deb)
    left = list((empty_cache / "wallpapers").glob("*")) if (empty_cache / "wallpapers").exists() else []
    assert left == []                                                    # nothing half-written stays
    plain = tmp_path / "plain.deb"
    plain.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a Debian package"):
        ph._deb_files(plain, {member})


@pytest.mark.parametrize("source", ["wallpapers", "matplotlib"])
def test_cached_sources_verify_and_load(source):
    if not is_fetched(source):
        pytest.skip(f"the {source!r} photos are not in the cache ({cache_dir()}); fetch them with: "
                    f"python train/fetch_photos.py --source {source}")
    files = fetch(source)                                 # verified files are kept: no download
    assert len(files) == len(SOURCES[source].files)
    for name in SOURCES[source].heldout:
        img = load_photo(f"{source}:{name}")
        assert img.dtype == np.uint8 and img.shape == SOURCES[source].files[name].shape + (3,)
    from frfsr_train.data.views import ViewPairDataset
    names = [f"{source}:{n}" for n in SOURCES[source].heldout] + ["coffee"]
    item = ViewPairDataset(names, patch=64, length=1, seed=0)[0]
    assert item["hr"].shape == (3, 64, 64) and item["photo"] in names
