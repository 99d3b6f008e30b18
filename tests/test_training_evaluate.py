"""frfsr_train.evaluate on generated CUFED5 / pair folders with a tiny exported model."""
import argparse
import csv

import pytest
import torch

from frfsr import FRFSR, FRFSRConfig
from frfsr_train.data import CUFED5Dataset
from frfsr.metrics import psnr_y, ssim_y
from frfsr_train.training.synthetic import make_cufed5, make_pairs


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return FRFSR(FRFSRConfig.tiny()).save_pretrained(tmp_path_factory.mktemp("model"))


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cufed5_levels_and_shuffles(model_dir, tmp_path, capsys):
    from frfsr_train.evaluate import main
    data = make_cufed5(tmp_path / "cufed5", num_images=1, size=64)
    out = tmp_path / "eval"
    assert main(["--model", str(model_dir), "--data", str(data), "--layout", "cufed5", "--levels", "1,5",
                 "--shuffle", "easy", "--out", str(out), "--samples", "1", "--no-lpips", "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "psnr" in table and "ssim" in table and "bicubic" in table
    summary = _read(out / "summary.csv")
    assert [(r["method"], r["ref_level"], r["shuffle"]) for r in summary] == [
        ("bicubic", "-", "-"), ("frfsr", "1", "none"), ("frfsr", "1", "easy"), ("frfsr", "5", "none"),
        ("frfsr", "5", "easy")]
    rows = _read(out / "per_image.csv")
    assert len(rows) == 5 and all(r["psnr"] and r["ssim"] for r in rows)
    assert (out / "samples" / "000.png").is_file()
    # the bicubic row is the literature's Y-channel PSNR / SSIM of the PIL-bicubic LR upsampled
    item = CUFED5Dataset(data)[0]
    assert float(rows[0]["psnr"]) == pytest.approx(psnr_y(item["lr_up"], item["hr"], 4, quantize=True), abs=1e-9)
    assert float(rows[0]["ssim"]) == pytest.approx(ssim_y(item["lr_up"], item["hr"], 4, quantize=True), abs=1e-9)
    # the shuffled Ref changes the match; the result is reproducible
    assert rows[1]["relevance"] != rows[2]["relevance"]
    assert main(["--model", str(model_dir), "--data", str(data), "--layout", "cufed5", "--levels", "1",
                 "--shuffle", "easy", "--out", str(tmp_path / "again"), "--samples", "0", "--no-lpips", "--quiet"]) == 0
    again = _read(tmp_path / "again" / "per_image.csv")
    assert again[2]["psnr"] == rows[2]["psnr"]


def test_pairs_layout_through_subcommand_registration(model_dir, tmp_path):
    from frfsr_train.evaluate import add_evaluate_parser
    data = make_pairs(tmp_path / "pairs", num_images=1, size=64)
    parser = argparse.ArgumentParser(prog="frfsr")
    add_evaluate_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "--model", str(model_dir), "--data", str(data), "--layout", "pairs",
                              "--out", str(tmp_path / "out"), "--samples", "0", "--no-lpips", "--quiet"])
    assert args.func(args) == 0
    rows = _read(tmp_path / "out" / "summary.csv")
    assert [(r["method"], r["ref_level"], r["shuffle"]) for r in rows] == [("bicubic", "-", "-"), ("frfsr", "-", "none")]


def test_bad_arguments_are_reported(model_dir, tmp_path):
    from frfsr_train.evaluate import main
    with pytest.raises(SystemExit):
        main(["--model", str(model_dir), "--data", str(tmp_path), "--layout", "cufed5", "--shuffle", "extreme",
              "--out", str(tmp_path / "o")])
    assert main(["--model", str(model_dir), "--data", str(tmp_path / "missing"), "--layout", "pairs",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 2
