"""train/data_cli.py (qsattn-data): downloads from a loopback HTTP server started here (with and without Range,
cut mid-transfer, damaged zips, HTTP errors, a server that is down or silent, a full disk), Cityscapes'
preparation from tiny zips of its layout, list, and check on good and broken folders."""
import errno
import io
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qsattn_fast.train import data as D, data_cli as C

SPLIT_SIZES = {"trainA": 3, "trainB": 4, "testA": 1, "testB": 2}


def png(seed, size=(24, 16), colour=None):
    """PNG bytes: random noise, or one colour."""
    if colour is not None:
        img = Image.new("RGB", size, colour)
    else:
        img = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_zip(files, top=""):
    """Zip bytes (stored, so a flipped byte is a CRC error) of {path: bytes} under the folder ``top``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(top + name, data)
    return buf.getvalue()


def dataset_files():
    return {f"{split}/{i}.png": png(100 * k + i) for k, (split, n) in enumerate(SPLIT_SIZES.items()) for i in range(n)}


@pytest.fixture(scope="module")
def h2z_zip():
    return make_zip(dataset_files(), top="horse2zebra/")


class Mirror(ThreadingHTTPServer):
    """A loopback HTTP server of ``files`` {name: bytes} in a thread. ``ranges``: honour Range requests.
    ``plan``: what the next requests get, in order: an HTTP status, or "cut" (the body cut at half and the
    connection closed); then the file. ``requests``: each request's Range header (None without)."""

    def __init__(self, files, ranges=True, plan=()):
        super().__init__(("127.0.0.1", 0), MirrorHandler)
        self.files, self.ranges, self.plan, self.requests = dict(files), ranges, list(plan), []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True).start()

    def close(self):
        self.shutdown()
        self.server_close()


class MirrorHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        m = self.server
        asked = self.headers.get("Range")
        m.requests.append(asked)
        body = m.files.get(self.path.lstrip("/"))
        step = m.plan.pop(0) if m.plan else None
        if body is None or isinstance(step, int):
            self.send_error(step if isinstance(step, int) else 404)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", asked)[1]) if asked and m.ranges else 0
        if start >= len(body) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        data = body[start:]
        if step == "cut":
            data, self.close_connection = data[:len(data) // 2], True
        self.wfile.write(data)


@pytest.fixture
def mirror():
    servers = []

    def start(files, **kw):
        servers.append(Mirror(files, **kw))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(C, "CHUNK", 1024)   # many reads and progress steps on a small zip


def run(capsys, *argv):
    """(exit status, stdout, stderr) of qsattn-data in this process."""
    rc = C.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def leftovers(root):
    """What a download leaves in ``root`` besides finished datasets: temporary folders and partial files."""
    return [n for n in os.listdir(root) if n.startswith(".") or n.endswith(".part")]


def assert_dataset(folder):
    for split, n in SPLIT_SIZES.items():
        assert sorted(os.listdir(folder / split)) == [f"{i}.png" for i in range(n)]
    expected = dataset_files()
    for name, data in expected.items():
        assert (folder / name).read_bytes() == data


def test_list_names_every_dataset_with_size_and_source(capsys):
    rc, out, _ = run(capsys, "list")
    assert rc == 0
    for name in ("apple2orange", "summer2winter_yosemite", "horse2zebra", "monet2photo", "cezanne2photo",
                 "ukiyoe2photo", "vangogh2photo", "maps", "facades", "iphone2dslr_flower", "ae_photos",
                 "grumpifycat", "cityscapes"):
        assert re.search(rf"^{name} ", out, re.M), name
    assert re.search(r"^horse2zebra +116\.9 MB +CycleGAN$", out, re.M)
    assert re.search(r"^grumpifycat +\? +CUT$", out, re.M)


def test_download_unpacks_counts_and_names_the_next_command(tmp_path, capsys, mirror, h2z_zip):
    m = mirror({"horse2zebra.zip": h2z_zip})
    rc, out, err = run(capsys, "download", "horse2zebra", "--root", str(tmp_path), "--mirror", m.url + "/")
    assert rc == 0 and m.requests == [None]
    assert_dataset(tmp_path / "horse2zebra")   # the zip's top folder is the dataset
    assert leftovers(tmp_path) == []
    assert "trainA 3, trainB 4, testA 1, testB 2 images" in out
    assert f"next: qsattn-train --dataroot {tmp_path / 'horse2zebra'} --name horse2zebra --model qs" in out
    # Not a terminal: a progress line about every 10 %, rising to 100 %.
    pcts = [int(p) for p in re.findall(r"horse2zebra\.zip: (\d+)% ", err)]
    assert 9 <= len(pcts) <= 11 and pcts == sorted(pcts) and pcts[-1] == 100
    # Again: nothing is fetched, the counts are printed.
    rc, out, err = run(capsys, "download", "horse2zebra", "--root", str(tmp_path), "--mirror", m.url)
    assert rc == 0 and len(m.requests) == 1 and "already exists" in err and "trainA 3" in out


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_connection_cut_mid_transfer_is_resumed(tmp_path, capsys, mirror, h2z_zip, ranges):
    m = mirror({"horse2zebra.zip": h2z_zip}, ranges=ranges, plan=["cut"])
    rc, _, err = run(capsys, "download", "horse2zebra", "--root", str(tmp_path), "--mirror", m.url)
    assert rc == 0
    assert m.requests == [None, f"bytes={len(h2z_zip) // 2}-"]   # the second asks for the rest
    assert ("resuming at" in err) == ranges and ("starting again from 0" in err) != ranges
    assert_dataset(tmp_path / "horse2zebra")
    assert leftovers(tmp_path) == []


def test_failed_download_keeps_its_part_and_the_next_run_resumes(tmp_path, capsys, mirror, h2z_zip):
    m = mirror({"horse2zebra.zip": h2z_zip}, plan=["cut", 503])
    args = ("download", "horse2zebra", "--root", str(tmp_path), "--mirror", m.url)
    rc, out, err = run(capsys, *args)
    line = err.strip().splitlines()[-1]
    assert rc == 2 and line.startswith("qsattn-data: error: cannot download") and "HTTP 503" in line
    assert "Traceback" not in err and not (tmp_path / "horse2zebra").exists()
    part = tmp_path / "horse2zebra.zip.part"
    assert part.read_bytes() == h2z_zip[:len(h2z_zip) // 2]
    rc, _, err = run(capsys, *args)
    assert rc == 0 and m.requests[-1] == f"bytes={len(h2z_zip) // 2}-"
    assert_dataset(tmp_path / "horse2zebra")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("extra", [0, 10], ids=["complete", "stale"])
def test_part_at_or_past_the_end(tmp_path, capsys, mirror, h2z_zip, extra):
    """A whole zip left as .part (say the disk filled while unpacking) is answered 416 and used as it is; a
    longer one (another file's) is answered 416 too, and the download starts afresh."""
    m = mirror({"horse2zebra.zip": h2z_zip})
    (tmp_path / "horse2zebra.zip.part").write_bytes(h2z_zip + b"x" * extra)
    rc, _, _ = run(capsys, "download", "horse2zebra", "--root", str(tmp_path), "--mirror", m.url)
    assert rc == 0 and m.requests == [f"bytes={len(h2z_zip) + extra}-"] + ([None] if extra else [])
    assert_dataset(tmp_path / "horse2zebra")


def corrupt(zip_bytes):
    """The zip with one byte of its first member's data flipped (its CRC no longer matches)."""
    info = zipfile.ZipFile(io.BytesIO(zip_bytes)).infolist()[0]
    at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 10
    return zip_bytes[:at] + bytes([zip_bytes[at] ^ 0xFF]) + zip_bytes[at + 1:]


@pytest.mark.parametrize("damage,message", [(corrupt, "bad crc-32 for horse2zebra/traina/0.png"),
                                            (lambda z: z[:len(z) // 2], "not a zip file")],
                         ids=["crc", "truncated"])
def test_damaged_zip_unpacks_nothing(tmp_path, capsys, mirror, h2z_zip, damage, message):
    m = mirror({"horse2zebra.zip": damage(h2z_zip)})
    rc, _, err = run(capsys, "download", "horse2zebra", "--root", str(tmp_path), "--mirror", m.url)
    line = err.strip().splitlines()[-1]
    assert rc == 2 and line.startswith(f"qsattn-data: error: {m.url}/horse2zebra.zip is damaged:")
    assert message in line.lower()
    assert os.listdir(tmp_path) == []   # the damaged download is deleted too: running again fetches it afresh


def test_unknown_name_cityscapes_and_404_are_one_line(tmp_path, capsys, mirror):
    rc, _, err = run(capsys, "download", "hourse2zebra", "--root", str(tmp_path))
    assert rc == 2 and err.count("\n") == 1 and "unknown dataset 'hourse2zebra'; did you mean horse2zebra?" in err
    rc, _, err = run(capsys, "download", "cityscapes", "--root", str(tmp_path))
    assert rc == 2 and err.count("\n") == 1 and "registration" in err and "qsattn-data prepare cityscapes" in err
    m = mirror({})
    rc, _, err = run(capsys, "download", "facades", "--root", str(tmp_path), "--mirror", m.url)
    assert rc == 2 and err.strip().splitlines()[-1] == \
        f"qsattn-data: error: cannot download {m.url}/facades.zip: HTTP 404 Not Found"
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="unknown dataset"):   # --debug: the exception itself
        C.main(["download", "nosuch", "--debug"])


def test_server_down_or_silent(tmp_path, capsys):
    with socket.socket() as s:          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, _, err = run(capsys, "download", "maps", "--root", str(tmp_path), "--mirror", f"http://127.0.0.1:{port}")
    assert rc == 2 and "cannot download" in err and "refused" in err.lower()
    with socket.socket() as s:          # listens (the kernel accepts the connection) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        rc, _, err = run(capsys, "download", "maps", "--root", str(tmp_path), "--timeout", "0.2",
                         "--mirror", f"http://127.0.0.1:{s.getsockname()[1]}")
    assert rc == 2 and "no answer within 0.2 s" in err
    assert os.listdir(tmp_path) == []


def test_full_disk(tmp_path, capsys, mirror, h2z_zip, monkeypatch):
    m = mirror({"horse2zebra.zip": h2z_zip})
    args = ("download", "horse2zebra", "--root", str(tmp_path), "--mirror", m.url)
    usage = C.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(C.shutil, "disk_usage", lambda p: usage._replace(free=len(h2z_zip)))
    rc, _, err = run(capsys, *args)
    assert rc == 2 and "not enough space under" in err and "free" in err
    monkeypatch.undo()
    monkeypatch.setattr(C, "CHUNK", 1024)

    def fill_up(self, path, members):   # the disk fills after the first file
        self.extract(members[1], path)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(zipfile.ZipFile, "extractall", fill_up)
    rc, _, err = run(capsys, *args)
    assert rc == 2 and "No space left on device" in err
    assert os.listdir(tmp_path) == ["horse2zebra.zip.part"]   # no half-unpacked folder; the zip is kept


def test_module_entry_point_errors_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qsattn_fast.train.data_cli", "download", "nosuch", "--root",
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("qsattn-data: error: unknown dataset 'nosuch'")
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_readme_real_data_quick_start(tmp_path, capsys, mirror, h2z_zip, monkeypatch):
    """The README's two commands: the download (from a loopback mirror) leaves what the training command reads,
    and prints that command's --dataroot and --model."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"## Quick start on real data.*?```bash\n(.*?)```", readme, re.S).group(1)
    download, train = (shlex.split(line.split("#")[0]) for line in block.strip().splitlines())
    assert download[:2] == ["qsattn-data", "download"] and train[0] == "qsattn-train"
    monkeypatch.chdir(tmp_path)
    m = mirror({"horse2zebra.zip": h2z_zip})
    rc, out, _ = run(capsys, *download[1:], "--mirror", m.url)
    dataroot = train[train.index("--dataroot") + 1]
    assert rc == 0 and f"--dataroot {dataroot} " in out and "--model qs" in out
    assert len(D.UnalignedDataset(dataroot)) == SPLIT_SIZES["trainB"]


# Cityscapes: tiny zips of the two archives' layout.
CITIES = {"train": [("aachen", "000000_000019"), ("bochum", "000000_000313")], "val": [("lindau", "000000_000019")],
          "test": [("berlin", "000000_000019")]}


def cityscapes_zips(tmp_path, rename=None):
    """gtFine and leftImg8bit zips: red photos, blue label maps (and labelIds files prepare must skip)."""
    gt, photos = {}, {}
    for phase, items in CITIES.items():
        for city, frame in items:
            stem = f"{phase}/{city}/{city}_{frame}"
            gt[f"{stem}_gtFine_color.png"] = png(0, (64, 32), (0, 0, 255))
            gt[f"{stem}_gtFine_labelIds.png"] = png(0, (64, 32), (7, 7, 7))
            photos[(rename or {}).get(stem, stem) + "_leftImg8bit.png"] = png(0, (64, 32), (255, 0, 0))
    (tmp_path / "gtFine.zip").write_bytes(make_zip(gt, "gtFine/"))
    (tmp_path / "leftImg8bit.zip").write_bytes(make_zip(photos, "leftImg8bit/"))
    return ["--gtFine", str(tmp_path / "gtFine.zip"), "--leftImg8bit", str(tmp_path / "leftImg8bit.zip")]


def test_prepare_cityscapes_builds_cut_layout(tmp_path, capsys):
    rc, out, _ = run(capsys, "prepare", "cityscapes", *cityscapes_zips(tmp_path), "--root", str(tmp_path / "ds"))
    assert rc == 0
    root = tmp_path / "ds" / "cityscapes"
    assert sorted(os.listdir(root)) == ["testA", "testB", "trainA", "trainB"]
    assert sorted(os.listdir(root / "trainA")) == ["0_A.jpg", "1_A.jpg"] and os.listdir(root / "testB") == ["0_B.jpg"]
    for side, colour in (("A", (255, 0, 0)), ("B", (0, 0, 255))):   # photos in A, label maps in B
        with Image.open(root / f"train{side}" / f"1_{side}.jpg") as img:
            assert img.size == (256, 256) and img.mode == "RGB" and img.format == "JPEG"
            assert np.abs(np.asarray(img, dtype=int) - colour).max() <= 2
    assert "trainA 2, trainB 2, testA 1, testB 1 images" in out
    assert "--name cityscapes --model qs --direction BtoA" in out
    assert leftovers(tmp_path / "ds") == []


def test_prepare_cityscapes_refuses_mismatched_or_damaged_zips(tmp_path, capsys):
    ds = str(tmp_path / "ds")
    args = cityscapes_zips(tmp_path, rename={"train/bochum/bochum_000000_000313": "train/bochum/bochum_000000_000314"})
    rc, _, err = run(capsys, "prepare", "cityscapes", *args, "--root", ds)
    assert rc == 2 and "do not match" in err and "bochum_000000_000314" in err
    assert leftovers(tmp_path / "ds") == [] and not (tmp_path / "ds" / "cityscapes").exists()
    args = cityscapes_zips(tmp_path)
    (tmp_path / "gtFine.zip").write_bytes(corrupt((tmp_path / "gtFine.zip").read_bytes()))
    rc, _, err = run(capsys, "prepare", "cityscapes", *args, "--root", ds)
    assert rc == 2 and "gtFine.zip is damaged" in err and "CRC" in err
    assert os.listdir(tmp_path / "ds") == []


# check: the same files the trainer reads, the same verification.
def write_folder(root, sizes=SPLIT_SIZES):
    for name, data in dataset_files().items():
        if name.split("/")[0] in sizes:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)


def test_check_reports_a_good_folder(tmp_path, capsys):
    write_folder(tmp_path)
    Image.new("L", (50, 40)).save(tmp_path / "trainB" / "grey.png")
    (tmp_path / "testA" / "copy.png").write_bytes((tmp_path / "trainA" / "1.png").read_bytes())
    rc, out, _ = run(capsys, "check", str(tmp_path))
    assert rc == 0
    assert re.search(r"trainA +3 +24x16 +24x16 +RGB 3 +0$", out, re.M)
    assert re.search(r"trainB +5 +24x16 +50x40 +RGB 4, L 1 +0$", out, re.M)
    assert "images repeated across splits: 1 (trainA/1.png = testA/copy.png)" in out
    assert "converted to RGB" in out and out.rstrip().endswith("can start")


def test_check_fails_where_the_trainer_would(tmp_path, capsys):
    write_folder(tmp_path, {"trainA": 3})
    rc, out, _ = run(capsys, "check", str(tmp_path))
    assert rc == 1 and "error: trainB/ is missing" in out
    write_folder(tmp_path)
    bad = tmp_path / "trainA" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])   # truncated: the trainer's start-up check refuses it
    (tmp_path / "trainB" / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot be read"):
        D.UnalignedDataset(str(tmp_path))
    # A truncated JPEG passes that check (its pixel data is not decoded) and stops training when loaded.
    cut = tmp_path / "testA" / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(cut)
    cut.write_bytes(cut.read_bytes()[:-200])
    assert D.unreadable_images([str(cut)]) == []
    with pytest.raises(ValueError, match="truncated"):
        D.load_image(str(cut))
    rc, out, _ = run(capsys, "check", str(tmp_path))
    assert rc == 1
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert [e.split(":")[1] for e in errors] == [" trainA", " trainB", " testA"]
    assert "1 of 3 images cannot be read" in errors[0] and "trainA/1.png" in errors[0]
    assert "trainB/notes.png" in errors[1] and "testA/cut.jpg (image file is truncated" in errors[2]
    assert re.search(r"trainA +3 +24x16 +24x16 +RGB 2 +1$", out, re.M)
    assert "3 problem(s) would stop qsattn-train" in out
    rc, _, err = run(capsys, "check", str(tmp_path / "nope"))
    assert rc == 2 and err == f"qsattn-data: error: {tmp_path / 'nope'} is not a folder\n"
