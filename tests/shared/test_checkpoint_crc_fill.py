"""The zip CRC-32s of a checkpoint computed after torch wrote it with its own CRC off.

The file must come out as torch writes it with the option on (the same standard zip every reader
checks), a byte changed afterwards must still be caught, and a file of any other layout must be
left untouched (the caller then saves again with torch's CRC).
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from shared import checkpoint_crc
from shared.checkpoint_crc import UnexpectedZipLayout, check_zip_crc, fill_in_zip_crcs
from worker.checkpointing import checkpoint_write
from worker.checkpointing.checkpoint_write import save_checkpoint_file


def checkpoint_like_state() -> dict:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(300, 64, generator=generator)
    return {
        "model": {"wte.weight": weight, "lm_head.weight": weight,  # tied: one storage
                  "ln.bias": torch.zeros(64), "empty": torch.zeros(0)},
        "optimizer": {"state": {0: {"exp_avg": torch.randn(300, 64, generator=generator),
                                    "step": torch.tensor(7.0)}}},
        "step": 7,
        "rng": torch.get_rng_state(),
    }


def torch_save(state: dict, path: Path, crc: bool) -> Path:
    previous = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(crc)
    try:
        torch.save(state, str(path))
    finally:
        torch.serialization.set_crc32_options(previous)
    return path


@pytest.mark.parametrize("crc_chunk", [64 * 1024 * 1024, 1000])  # one read per member; many
def test_filled_crcs_make_the_file_torch_writes_with_its_crc_on(tmp_path, monkeypatch, crc_chunk):
    monkeypatch.setattr(checkpoint_crc, "_CRC_CHUNK", crc_chunk)
    state = checkpoint_like_state()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    reference = torch_save(state, tmp_path / "a" / "model_00007.pt", crc=True)
    filled = torch_save(state, tmp_path / "b" / "model_00007.pt", crc=False)
    assert not check_zip_crc(filled)[0], "torch wrote CRCs although asked not to: the test proves nothing"

    assert fill_in_zip_crcs(filled, threads=2) >= 8

    ok, detail = check_zip_crc(filled)
    assert ok, detail
    want, got = reference.read_bytes(), filled.read_bytes()
    assert len(want) == len(got)
    with zipfile.ZipFile(reference) as a, zipfile.ZipFile(filled) as b:
        crcs_a = {i.filename: i.CRC for i in a.infolist() if not i.filename.endswith("serialization_id")}
        crcs_b = {i.filename: i.CRC for i in b.infolist() if not i.filename.endswith("serialization_id")}
    assert crcs_a == crcs_b
    # torch draws a fresh serialization_id per save: its bytes and its two CRC fields may differ,
    # nothing else may.
    with filled.open("rb") as handle:
        random_id = next(m for m in checkpoint_crc._torch_zip_members(handle) if m.name.endswith("serialization_id"))
    may_differ = set(range(random_id.data_offset, random_id.data_offset + random_id.size))
    for field in (random_id.descriptor_crc_offset, random_id.central_crc_offset):
        may_differ.update(range(field, field + 4))
    differing = {i for i, (x, y) in enumerate(zip(want, got, strict=True)) if x != y}
    assert differing - may_differ == set()
    loaded = torch.load(filled, weights_only=True)
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    assert loaded["model"]["wte.weight"].data_ptr() == loaded["model"]["lm_head.weight"].data_ptr()


def test_a_byte_changed_after_the_fill_is_still_caught(tmp_path):
    path = torch_save(checkpoint_like_state(), tmp_path / "model_00007.pt", crc=False)
    fill_in_zip_crcs(path)
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
        offset = info.header_offset + 30 + len(info.filename.encode()) + info.compress_size // 2
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    ok, detail = check_zip_crc(path)
    assert not ok and "CRC-32 mismatch" in detail and "data/0" in detail


@pytest.mark.parametrize("kind", ["compressed-zip", "not-a-zip", "cut-short"])
def test_any_other_layout_is_refused_and_left_untouched(tmp_path, kind):
    path = tmp_path / "model_00007.pt"
    if kind == "compressed-zip":
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("x/data.pkl", b"a" * 1000)
    elif kind == "not-a-zip":
        path.write_bytes(b"\x00" * 4096)
    else:
        torch_save(checkpoint_like_state(), path, crc=False)
        path.write_bytes(path.read_bytes()[:-100])
    before = path.read_bytes()
    with pytest.raises(UnexpectedZipLayout):
        fill_in_zip_crcs(path)
    assert path.read_bytes() == before


def test_save_checkpoint_file_writes_every_crc_and_restores_torchs_option(tmp_path):
    state = checkpoint_like_state()
    path = tmp_path / "model_00007.pt"
    assert torch.serialization.get_crc32_options() is True
    save_checkpoint_file(state, path)
    assert torch.serialization.get_crc32_options() is True
    ok, detail = check_zip_crc(path)
    assert ok, detail
    assert torch.equal(torch.load(path, weights_only=True)["rng"], state["rng"])


def test_an_unexpected_layout_falls_back_to_torchs_own_crc(tmp_path, monkeypatch):
    def refuse(path: Path, threads: int = 2) -> int:
        raise UnexpectedZipLayout("pretend torch changed its layout")

    monkeypatch.setattr(checkpoint_write, "fill_in_zip_crcs", refuse)
    path = tmp_path / "model_00007.pt"
    save_checkpoint_file(checkpoint_like_state(), path)
    ok, detail = check_zip_crc(path)
    assert ok, detail
    assert torch.serialization.get_crc32_options() is True
