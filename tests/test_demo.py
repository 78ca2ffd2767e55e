"""The README's demo runs end to end on a real sample video."""

from __future__ import annotations

import pytest

from llava import demo


def test_demo_runs_on_sample_video(capsys):
    demo.main(["--frames", "3", "--codec-frames", "8"])
    out = capsys.readouterr().out
    assert "video: bigbuckbunny.mp4, 3 frames" in out
    assert "from 8 frames" in out and "4 mosaics of 224x224" in out
    assert "all three, one packed pass" in out
    assert "packed vs per-sample max |difference|" in out
    assert "demo finished" in out


def test_demo_loads_a_given_checkpoint(tmp_path, capsys):
    from encoder_utils import tiny_encoder

    tiny_encoder().save_pretrained(tmp_path)
    demo.main(["--encoder", str(tmp_path), "--frames", "2", "--codec-frames", "4"])
    assert "feature width 64" in capsys.readouterr().out


def test_demo_rejects_a_missing_video(tmp_path):
    with pytest.raises(SystemExit):
        demo.main(["--video", str(tmp_path / "nope.mp4")])


def test_demo_rejects_a_file_that_is_not_a_video(tmp_path):
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"not a video at all")
    with pytest.raises(SystemExit, match="bogus.mp4: not a readable video"):
        demo.main(["--video", str(bogus)])
