import pytest
import torch

from torchslim import SlimError
from torchslim.calibration import check_batch, from_spec, split
from torchslim.inputs import Example

EX = Example((torch.zeros(4, 3, 8, 8),))


def test_a_tensor_file_is_cut_into_example_sized_batches(tmp_path):
    path = tmp_path / "calib.pt"
    torch.save(torch.randn(18, 3, 8, 8), path)
    batches = from_spec(str(path), EX, samples=100)()
    assert len(batches) == 4 and all(b.args[0].shape == (4, 3, 8, 8) for b in batches)  # 2 leftover dropped
    assert len(from_spec(str(path), EX, samples=8)()) == 2


def test_dict_inputs_split_together():
    data = Example((), {"ids": torch.arange(12).reshape(6, 2), "mask": torch.ones(6, 2)})
    parts = split(data, 3)
    assert len(parts) == 2 and torch.equal(parts[1].kwargs["ids"], torch.arange(6, 12).reshape(3, 2))


def test_factory_spec(tmp_path):
    f = tmp_path / "calib.py"
    f.write_text("import torch\ndef batches():\n    return [torch.randn(4, 3, 8, 8) for _ in range(3)]\n")
    assert len(from_spec(f"{f}:batches", EX)()) == 3


def test_bad_calibration_data_is_refused(tmp_path):
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.randn(8, 3, 9, 9), wrong)
    with pytest.raises(SlimError, match=r"calibration input 0 is \(4, 3, 9, 9\):float32, the example is \(4, 3, 8, 8\)"):
        from_spec(str(wrong), EX)
    empty = tmp_path / "empty.pt"
    torch.save(torch.randn(2, 3, 8, 8), empty)  # fewer samples than one batch
    with pytest.raises(SlimError, match="empty"):
        from_spec(str(empty), EX)
    with pytest.raises(SlimError, match="does not exist"):
        from_spec(str(tmp_path / "nope.pt"), EX)
    with pytest.raises(SlimError, match="2 input tensor"):
        check_batch(Example((torch.zeros(4, 3, 8, 8), torch.zeros(4))), EX)
    with pytest.raises(SlimError, match="int64"):
        check_batch(Example((torch.zeros(4, 3, 8, 8, dtype=torch.int64),)), EX)
