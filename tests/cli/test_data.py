"""DATA resolution: text files, .npz inputs, folder hold-outs and the errors, with a stand-in tokenizer."""

import numpy as np
import pytest
import torch

from bitfold.cli.data import load_data
from bitfold.cli.errors import CLIError
from bitfold.cli.models import ModelSource


def _text_model() -> ModelSource:
    """A text model whose "tokenizer" returns the text lengths, so batches can be read back."""
    def preprocess(texts, max_length):
        lengths = torch.tensor([min(len(t), max_length) for t in texts])
        return lengths, torch.ones_like(lengths)

    return ModelSource("fake", "fake", torch.nn.Identity(), preprocess, "text")


def test_text_file_batches_and_holds_out_the_last_lines(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join("x" * n for n in range(1, 11)) + "\n\n")
    data = load_data(str(path), _text_model(), samples=6, eval_samples=3, batch_size=4, max_length=8)
    assert [item[0].tolist() for item in data.items] == [[1, 2, 3, 4], [5, 6]]  # --samples 6
    assert [item[0].tolist() for item in data.evaluation] == [[8, 8, 8]]  # lines 8-10, capped at max_length
    assert data.held_out and data.description == "3 texts of texts.txt"


def test_single_line_is_used_for_both(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("only line\n")
    data = load_data(str(path), _text_model(), samples=4, eval_samples=2)
    assert not data.held_out and data.evaluation == data.items


def test_npz_keeps_the_saved_order_and_folders_hold_out_a_quarter(tmp_path):
    for i in range(8):
        np.savez(tmp_path / f"b{i}.npz", input_ids=np.full((2, 3), i, dtype=np.int64),
                 attention_mask=np.ones((2, 3), dtype=np.int64))
    data = load_data(str(tmp_path), _text_model())
    assert len(data.items) == 6 and len(data.evaluation) == 2 and data.held_out
    ids, mask = data.evaluation[-1]
    assert ids.dtype == torch.int64 and int(ids[0, 0]) == 7 and bool((mask == 1).all())


def test_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(CLIError, match="no non-empty lines: calibration data is empty"):
        load_data(str(empty), _text_model())
    image_model = ModelSource("img", "img", torch.nn.Identity(), lambda x: (x,), "image")
    with pytest.raises(CLIError, match="holds texts, but img takes image inputs"):
        load_data(str(empty), image_model)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(CLIError, match="not a readable .npy/.npz file"):
        load_data(str(tmp_path / "bad.npy"), _text_model())
