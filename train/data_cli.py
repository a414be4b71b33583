"""``qsattn-data`` (also ``python -m qsattn_fast.train.data_cli``): real datasets in the layout the trainer
reads (docs/training.md, "Real datasets").

``download NAME`` fetches one of CUT's and CycleGAN's zips (resuming with HTTP Range), checks every member's
CRC, unpacks it into a temporary folder and renames that to ``ROOT/NAME``; ``prepare cityscapes`` builds
labels->photo from Cityscapes' two zips as CUT's ``prepare_cityscapes_dataset.py`` does; ``list`` names
the datasets; ``check DIR`` reports what the trainer will find in a folder.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import http.client
import io
import os
import re
import shlex
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections import Counter, namedtuple

from PIL import Image

from .cli import Parser, add_debug_flag, one_line_errors
from .data import DECODE_ERRORS, list_images, unreadable_images

Dataset = namedtuple("Dataset", "name url size source")
_HOST = "https://efrosgans.eecs.berkeley.edu/cyclegan/datasets"   # the address in CUT's and CycleGAN's scripts
#: Every name of the upstream download scripts. Sizes in bytes, as TensorFlow Datasets' checksum list
#: records those zips (None: not recorded); cityscapes has no URL (it needs a registration).
DATASETS = [
    Dataset("apple2orange", f"{_HOST}/apple2orange.zip", 78_456_409, "CycleGAN"),
    Dataset("summer2winter_yosemite", f"{_HOST}/summer2winter_yosemite.zip", 132_640_856, "CycleGAN"),
    Dataset("horse2zebra", f"{_HOST}/horse2zebra.zip", 116_867_962, "CycleGAN"),
    Dataset("monet2photo", f"{_HOST}/monet2photo.zip", 305_231_073, "CycleGAN"),
    Dataset("cezanne2photo", f"{_HOST}/cezanne2photo.zip", 279_885_071, "CycleGAN"),
    Dataset("ukiyoe2photo", f"{_HOST}/ukiyoe2photo.zip", 292_946_532, "CycleGAN"),
    Dataset("vangogh2photo", f"{_HOST}/vangogh2photo.zip", 306_590_349, "CycleGAN"),
    Dataset("maps", f"{_HOST}/maps.zip", 1_476_754_427, "CycleGAN"),
    Dataset("facades", f"{_HOST}/facades.zip", 35_135_868, "CycleGAN"),
    Dataset("iphone2dslr_flower", f"{_HOST}/iphone2dslr_flower.zip", 339_964_458, "CycleGAN"),
    Dataset("ae_photos", f"{_HOST}/ae_photos.zip", None, "CycleGAN"),
    Dataset("grumpifycat", f"{_HOST}/grumpifycat.zip", None, "CUT"),
    Dataset("cityscapes", None, None, "Cityscapes (registration; qsattn-data prepare cityscapes)"),
]
CITYSCAPES_HELP = ("cityscapes needs a (free) registration at https://www.cityscapes-dataset.com: download "
                   "gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip there, then run: qsattn-data prepare "
                   "cityscapes --gtFine gtFine_trainvaltest.zip --leftImg8bit leftImg8bit_trainvaltest.zip")
SPLITS = ("trainA", "trainB", "testA", "testB")
CHUNK = 1 << 16   # bytes per read of a download
TRIES = 5         # attempts of one download, while each attempt receives something
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)


def log(msg: str) -> None:
    print(f"qsattn-data: {msg}", file=sys.stderr, flush=True)


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class Progress:
    """Progress of ``total`` units on stderr: a tqdm bar on a terminal, else a line at about every 10 %
    (every 10 MB of bytes when ``total`` is None)."""

    def __init__(self, label: str, total, done: int = 0, unit: str = "B"):
        self.label, self.total, self.done, self.unit = label, total, done, unit
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, desc=label, unit=unit, unit_scale=unit == "B",
                            dynamic_ncols=True, leave=False)
        self.mark = self._next(done)

    def _next(self, done: int) -> int:
        step = -(-self.total // 10) if self.total else 10_000_000
        return (done // step + 1) * step

    def _amount(self) -> str:
        if self.unit != "B":
            return f"{self.done} of {self.total} {self.unit}"
        return f"{mb(self.done)} of {mb(self.total)}" if self.total else f"{mb(self.done)} so far"

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.done >= self.mark or self.done == self.total:
            pct = f"{100 * self.done // self.total}% " if self.total else ""
            log(f"{self.label}: {pct}({self._amount()})")
            self.mark = self._next(self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def find_dataset(name: str) -> Dataset:
    """The table's row for ``name``; ValueError for an unknown name and for cityscapes (no download)."""
    names = [d.name for d in DATASETS]
    if name not in names:
        close = difflib.get_close_matches(name, names, 1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ValueError(f"unknown dataset {name!r}; {hint}choose from {', '.join(names)} (qsattn-data list)")
    entry = DATASETS[names.index(name)]
    if entry.url is None:
        raise ValueError(CITYSCAPES_HELP)
    return entry


def ensure_space(folder: str, needed: int, what: str) -> None:
    """OSError unless ``folder``'s file system has ``needed`` bytes free."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise OSError(f"not enough space under {folder}: {what} needs {mb(needed)}, {mb(free)} free")


def _span(resp, have: int):
    """(first byte, total size or None) of a response to a request for the bytes from ``have`` on."""
    if resp.status == 206:
        m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if not m or int(m[1]) != have:
            raise ConnectionError(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}")
        return have, None if m[2] == "*" else int(m[2])
    length = resp.headers.get("Content-Length")
    return 0, int(length) if length else None


def _why(e: BaseException, timeout: float) -> str:
    reason = getattr(e, "reason", e)
    return f"no answer within {timeout:g} s" if isinstance(reason, TimeoutError) else str(reason) or type(e).__name__


def fetch(url: str, part: str, timeout: float) -> None:
    """Download ``url`` into ``part``, resuming from what ``part`` holds where the server honours Range;
    an attempt cut off after receiving something is resumed, up to :data:`TRIES` attempts. ``part`` is
    kept on failure, so that running again resumes."""
    label = os.path.basename(part)[:-len(".part")]
    for attempt in range(TRIES):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        headers = {"User-Agent": "qsattn-data", **({"Range": f"bytes={have}-"} if have else {})}
        got = 0
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
                start, total = _span(resp, have)
                if have and not start:
                    log(f"{label}: the server does not resume downloads; starting again from 0")
                elif start:
                    log(f"{label}: resuming at {mb(start)}")
                if total is not None:
                    ensure_space(os.path.dirname(part) or ".", 2 * total - start, f"{label} and its unpacked files")
                progress = Progress(label, total, start)
                try:
                    with open(part, "ab" if start else "wb") as f:
                        while True:
                            chunk = resp.read(CHUNK)
                            if not chunk:
                                break
                            f.write(chunk)
                            got += len(chunk)
                            progress.update(len(chunk))
                finally:
                    progress.close()
                if total is not None and start + got < total:
                    raise ConnectionError(f"connection closed at {mb(start + got)} of {mb(total)}")
            return
        except urllib.error.HTTPError as e:
            if e.code == 416:   # nothing left after ``have``: complete if that is the whole size, else stale
                if e.headers.get("Content-Range", "").endswith(f"/{have}"):
                    return
                os.remove(part)
                continue
            raise OSError(f"cannot download {url}: HTTP {e.code} {e.reason}") from e
        except NETWORK_ERRORS as e:
            if got and attempt + 1 < TRIES:
                log(f"{label}: {_why(e, timeout)}; trying again")
                continue
            kept = (f" ({part} holds {mb(os.path.getsize(part))}: run the command again to resume)"
                    if os.path.exists(part) and os.path.getsize(part) else "")
            raise OSError(f"cannot download {url}: {_why(e, timeout)}{kept}") from e
    raise OSError(f"cannot download {url}: gave up after {TRIES} attempts")


@contextlib.contextmanager
def zip_errors(what: str):
    """A damaged zip (bad CRC, truncated, corrupt stream) raises ValueError naming it ``what``."""
    try:
        yield
    except ZIP_ERRORS as e:
        raise ValueError(f"{what} is damaged: {e or type(e).__name__}") from e


def checked_members(path: str, what: str) -> list[zipfile.ZipInfo]:
    """The members of zip ``path`` (less macOS's ``__MACOSX/`` folder) once every member's CRC is checked;
    errors name it ``what``."""
    with zip_errors(what), zipfile.ZipFile(path) as zf:
        bad = zf.testzip()
        if bad is not None:
            raise zipfile.BadZipFile(f"bad CRC-32 for {bad}")
        return [m for m in zf.infolist() if not m.filename.startswith("__MACOSX/")]


def build_atomically(target: str, build) -> None:
    """``build(tmp)`` in a temporary folder beside ``target``, then the folder it returns (``tmp`` or one
    inside it) renamed to ``target``; ``tmp`` is removed whatever happens, so ``target`` is whole or absent."""
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", suffix=".partial",
                           dir=os.path.dirname(target) or ".")
    try:
        os.rename(build(tmp), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def unpack(path: str, members: list[zipfile.ZipInfo], target: str) -> None:
    """Unpack ``members`` of zip ``path`` to ``target`` (the zip's single top folder, if it has one)."""
    ensure_space(os.path.dirname(target) or ".", sum(m.file_size for m in members), f"unpacking {path}")

    def extract(tmp):
        with zip_errors(path), zipfile.ZipFile(path) as zf:
            zf.extractall(tmp, members)
        top = os.listdir(tmp)
        return os.path.join(tmp, top[0]) if len(top) == 1 and os.path.isdir(os.path.join(tmp, top[0])) else tmp
    build_atomically(target, extract)


def split_counts(folder: str) -> dict:
    """{subfolder: image count} as the trainer counts images (recursively, its extensions)."""
    counts = {}
    for name in sorted(os.listdir(folder), key=lambda n: (SPLITS.index(n) if n in SPLITS else len(SPLITS), n)):
        if os.path.isdir(os.path.join(folder, name)):
            try:
                counts[name] = len(list_images(os.path.join(folder, name)))
            except FileNotFoundError:
                counts[name] = 0
    return counts


def report(folder: str, name: str, flags: str = "") -> None:
    """Print the image count per split and the ``qsattn-train`` command to run next."""
    counts = split_counts(folder)
    print(f"{folder}: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "no folders") + " images")
    if counts.get("trainA") and counts.get("trainB"):
        print(f"next: qsattn-train --dataroot {shlex.quote(folder)} --name {name} --model qs{flags}")
    else:
        print(f"{folder} has no trainA/ and trainB/ with images: qsattn-train cannot train on it as it is "
              f"(qsattn-data check {shlex.quote(folder)})")


def download(name: str, root: str, mirror, timeout: float) -> int:
    entry = find_dataset(name)
    url = f"{mirror.rstrip('/')}/{name}.zip" if mirror else entry.url
    target = os.path.normpath(os.path.join(root, name))
    if os.path.exists(target):
        log(f"{target} already exists; nothing downloaded (remove it to download again)")
    else:
        os.makedirs(root, exist_ok=True)
        part = target + ".zip.part"
        log(f"downloading {url}")
        fetch(url, part, timeout)
        log(f"{name}.zip: checking every file's CRC, then unpacking it to {target}")
        try:
            members = checked_members(part, url)
        except ValueError as e:
            os.remove(part)
            raise ValueError(f"{e} (deleted; run again to download it afresh)") from e
        unpack(part, members, target)
        os.remove(part)
    report(target, name)
    return 0


def _pairs(gt: zipfile.ZipFile, photos: zipfile.ZipFile, phase: str) -> list[tuple[str, str]]:
    """(label map, photo) member pairs of ``phase``, as CUT's script pairs ``<phase>/*/*_color.png`` of
    gtFine with ``<phase>/*/*_leftImg8bit.png`` of leftImg8bit: sorted, checked name by name."""
    def members(zf, suffix):
        return sorted(n for n in zf.namelist() if n.endswith(suffix) and n.split("/")[-3:-2] == [phase])
    labels, shots = members(gt, "_color.png"), members(photos, "_leftImg8bit.png")
    if not labels or len(labels) != len(shots):
        raise ValueError(f"{phase}: {len(labels)} label maps ({phase}/*/*_color.png) in {gt.filename} and "
                         f"{len(shots)} photos ({phase}/*/*_leftImg8bit.png) in {photos.filename}; expected "
                         "the same number, above 0 (gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip)")
    for lab, shot in zip(labels, shots):
        if os.path.basename(lab).replace("_gtFine_color", "") != os.path.basename(shot).replace("_leftImg8bit", ""):
            raise ValueError(f"{phase}: label map {lab} and photo {shot} do not match")
    return list(zip(labels, shots))


def _resized(zf: zipfile.ZipFile, member: str) -> Image.Image:
    """A member image as RGB, resized to 256 x 256 (bicubic)."""
    with zip_errors(zf.filename):
        data = zf.read(member)   # checks the CRC
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB").resize((256, 256), Image.BICUBIC)
    except DECODE_ERRORS as e:
        raise ValueError(f"cannot read image {member} in {zf.filename}: {e}") from e


def prepare_cityscapes(gtfine: str, leftimg: str, root: str) -> int:
    """CUT's ``prepare_cityscapes_dataset.py``: train -> train, val -> test; photos to ``<split>A``, label
    maps to ``<split>B`` (``--direction BtoA`` trains labels -> photo), each 256 x 256, JPEG quality 100
    without chroma subsampling, numbered in sorted order. Written via a temporary folder."""
    target = os.path.normpath(os.path.join(root, "cityscapes"))
    if os.path.exists(target):
        raise FileExistsError(f"{target} already exists; remove it or pick another --root")
    os.makedirs(root, exist_ok=True)
    with zip_errors(gtfine), zipfile.ZipFile(gtfine) as gt, zip_errors(leftimg), zipfile.ZipFile(leftimg) as ph:
        phases = {"train": _pairs(gt, ph, "train"), "test": _pairs(gt, ph, "val")}

        def write(tmp):
            for split, pairs in phases.items():
                for side in "AB":
                    os.makedirs(os.path.join(tmp, split + side))
                progress = Progress(f"cityscapes {split}", len(pairs), unit="pairs")
                for i, (label, photo) in enumerate(pairs):
                    for side, zf, member in (("A", ph, photo), ("B", gt, label)):
                        _resized(zf, member).save(os.path.join(tmp, split + side, f"{i}_{side}.jpg"), format="JPEG",
                                                  quality=100, subsampling=0)
                    progress.update(1)
                progress.close()
            return tmp
        build_atomically(target, write)
    report(target, "cityscapes", " --direction BtoA")
    return 0


def list_datasets() -> int:
    w = max(len(d.name) for d in DATASETS)
    print(f"{'name':<{w}}  {'size':>9}  source")
    for d in DATASETS:
        print(f"{d.name:<{w}}  {mb(d.size) if d.size else '?':>9}  {d.source}")
    return 0


def _digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _inspect(root: str, split: str, seen: dict):
    """(table row, unreadable images as "path (why)", modes) of one split; the readable images' digests are
    added to ``seen``. Unreadable: refused by the trainer's start-up check (:func:`.data.unreadable_images`)
    or failing to decode (what that check leaves out, JPEG's pixel data, stops training when loaded)."""
    paths = list_images(os.path.join(root, split), what=split)
    bad = unreadable_images(paths)
    refused = {p for p, _ in bad}
    sizes, modes = [], Counter()
    for p in paths:
        if p in refused:
            continue
        try:
            with Image.open(p) as img:
                sizes.append(img.size)
                modes[img.mode] += 1
                img.load()
        except DECODE_ERRORS as e:
            bad.append((p, str(e)))
            continue
        seen.setdefault(_digest(p), []).append(os.path.relpath(p, root))
    area = lambda s: (s[0] * s[1], s)   # noqa: E731
    lo, hi = (f"{s[0]}x{s[1]}" for s in (min(sizes, key=area), max(sizes, key=area))) if sizes else ("-", "-")
    row = (split, str(len(paths)), lo, hi, ", ".join(f"{m} {n}" for m, n in modes.most_common()), str(len(bad)))
    return row, [f"{os.path.relpath(p, root)} ({why})" for p, why in bad], modes


def check(root: str) -> int:
    """Print one screen about dataset folder ``root``; 1 if something in it would stop ``qsattn-train``
    (trainA/ or trainB/ missing or empty, an unreadable image in any split), else 0."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} is not a folder")
    errors, notes, rows, seen, modes = [], [], [], {}, Counter()
    for split in SPLITS:
        train = split.startswith("train")
        if not os.path.isdir(os.path.join(root, split)):
            if train:
                errors.append(f"{split}/ is missing: qsattn-train needs trainA/ and trainB/")
            continue
        try:
            row, bad, split_modes = _inspect(root, split, seen)
        except FileNotFoundError as e:   # no images
            (errors if train else notes).append(str(e))
            continue
        rows.append(row)
        modes.update(split_modes)
        if bad:
            stops = "qsattn-train refuses them or stops when it loads them" if train else "--eval_freq stops on them"
            errors.append(f"{split}: {len(bad)} of {row[1]} images cannot be read ({stops}): {_few(bad)}")
    if os.path.isdir(os.path.join(root, "testA")) != os.path.isdir(os.path.join(root, "testB")):
        notes.append("only one of testA/ and testB/: --eval_freq needs both")
    others = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)) and n not in SPLITS)
    if others:
        notes.append(f"folders qsattn-train does not read: {', '.join(others)}")
    repeats = [" = ".join(ps) for ps in seen.values() if len({p.split(os.sep)[0] for p in ps}) > 1]
    notes.append(f"images repeated across splits: {len(repeats)}" + (f" ({_few(repeats)})" if repeats else ""))
    if set(modes) - {"RGB"}:
        notes.append("images that are not RGB are converted to RGB when loaded (alpha dropped)")

    print(f"qsattn-data check: {root}")
    table = [("split", "images", "smallest", "largest", "modes", "unreadable")] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  " + "  ".join(c.rjust(w) if c.isdigit() else c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for line in [f"note: {n}" for n in notes] + [f"error: {e}" for e in errors]:
        print(line)
    if errors:
        print(f"{len(errors)} problem(s) would stop qsattn-train --dataroot {shlex.quote(root)}")
        return 1
    print(f"ok: qsattn-train --dataroot {shlex.quote(root)} can start")
    return 0


def build_parser() -> Parser:
    p = Parser(prog="qsattn-data", description="Download CUT's and CycleGAN's datasets, prepare Cityscapes, and "
                                               "check a dataset folder, in the layout qsattn-train reads.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    d = sub.add_parser("download", help="download and unpack a dataset to ROOT/NAME",
                       description="Download NAME.zip (resuming a partial download where the server allows), "
                                   "check every member's CRC and unpack it to ROOT/NAME.")
    d.add_argument("name", help="a name of qsattn-data list")
    d.add_argument("--root", default="./datasets", help="folder the dataset goes into")
    d.add_argument("--mirror", default=None, metavar="URL", help="fetch URL/NAME.zip instead (an offline mirror)")
    d.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server before giving up")
    c = sub.add_parser("prepare", help="build a dataset from archives you downloaded (cityscapes)",
                       description="Build ROOT/cityscapes (labels -> photo, 256 x 256) from Cityscapes' zips, "
                                   "as CUT's prepare_cityscapes_dataset.py does.")
    c.add_argument("which", choices=["cityscapes"])
    c.add_argument("--gtFine", required=True, metavar="ZIP", help="gtFine_trainvaltest.zip")
    c.add_argument("--leftImg8bit", required=True, metavar="ZIP", help="leftImg8bit_trainvaltest.zip")
    c.add_argument("--root", default="./datasets", help="folder the dataset goes into")
    ls = sub.add_parser("list", help="the dataset names, their sizes and sources")
    k = sub.add_parser("check", help="what qsattn-train will find in a dataset folder",
                       description="Layout, image counts, sizes, modes, unreadable images and images repeated "
                                   "across splits; exit status 1 if something would stop qsattn-train.")
    k.add_argument("dir", help="the dataset folder (--dataroot)")
    for s in (d, c, ls, k):
        add_debug_flag(s)
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    work = {"download": lambda: download(a.name, a.root, a.mirror, a.timeout),
            "prepare": lambda: prepare_cityscapes(a.gtFine, a.leftImg8bit, a.root),
            "list": list_datasets,
            "check": lambda: check(a.dir)}[a.command]
    try:
        return one_line_errors("qsattn-data", work, a.debug)
    except KeyboardInterrupt:
        print("qsattn-data: interrupted (a partial download is kept and resumed by the same command)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
