"""boltzdiff.io: atomic writes keep the old file on failure; checked loads give one-line errors."""

import json
import os
import pickle

import numpy as np
import pytest
import torch

from boltzdiff.errors import ConfigError
from boltzdiff.io import (
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    load_json,
    load_npy,
    load_npz,
    load_yaml_mapping,
    save_npy,
    save_npz,
    torch_load,
)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_atomic_write_leaves_the_old_file_when_the_write_fails(tmp_path):
    p = tmp_path / "out.json"
    atomic_write_json(p, {"a": 1})

    def fail(tmp):
        with open(tmp, "w") as fh:
            fh.write('{"a": 2, "trunc')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_save(p, fail)
    assert json.loads(p.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["out.json"]  # no temporary file left behind


def test_round_trips(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": np.float64(1.5), "y": np.arange(3)})
    assert load_json(tmp_path / "a.json", "a test file") == {"x": 1.5, "y": [0, 1, 2]}
    save_npy(tmp_path / "a.npy", np.arange(4.0))
    np.testing.assert_array_equal(load_npy(tmp_path / "a.npy", "an array"), np.arange(4.0))
    save_npz(tmp_path / "a.npz", {"u": np.ones(2), "v": np.zeros(3)})
    d = load_npz(tmp_path / "a.npz", "arrays")
    assert sorted(d) == ["u", "v"] and d["v"].shape == (3,)
    atomic_write_text(tmp_path / "a.yaml", "k: 1\n")
    assert load_yaml_mapping(tmp_path / "a.yaml", "a mapping") == {"k": 1}
    torch.save({"x": torch.ones(2), "n": 3}, tmp_path / "a.pt")
    ck = torch_load(tmp_path / "a.pt", "a checkpoint")
    assert ck["n"] == 3 and torch.equal(ck["x"], torch.ones(2))


def test_missing_and_truncated_files_give_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="missing; expected a progress file") as e:
        load_json(tmp_path / "nope.json", "a progress file")
    _one_line(e)

    j = tmp_path / "t.json"
    j.write_text('{"frames": 12, "sett')
    with pytest.raises(ConfigError, match=r"t\.json: unreadable or truncated .*expected a progress file") as e:
        load_json(j, "a progress file")
    _one_line(e)

    save_npy(tmp_path / "t.npy", np.arange(1000.0))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"t\.npy: unreadable or truncated .*expected frames") as e:
        load_npy(tmp_path / "t.npy", "frames")
    _one_line(e)

    save_npz(tmp_path / "t.npz", {"a": np.arange(1000.0)})
    data = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"t\.npz: unreadable or truncated .*expected windows") as e:
        load_npz(tmp_path / "t.npz", "windows")
    _one_line(e)

    torch.save({"x": torch.arange(1000.0)}, tmp_path / "t.pt")
    data = (tmp_path / "t.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"t\.pt: unreadable or truncated .*expected a checkpoint") as e:
        torch_load(tmp_path / "t.pt", "a checkpoint")
    _one_line(e)

    y = tmp_path / "t.yaml"
    y.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level is a list; expected a mapping") as e:
        load_yaml_mapping(y, "a mapping")
    _one_line(e)
    y.write_text("k: [1, 2\n")
    with pytest.raises(ConfigError, match="unreadable or truncated") as e:
        load_yaml_mapping(y, "a mapping")
    _one_line(e)


class _RunsCode:
    """Unpickling this would call ``os.system``: the attack ``weights_only=True`` exists to stop."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torch_load_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save({"payload": _RunsCode(marker)}, p)
    with open(tmp_path / "evil.pkl", "wb") as fh:  # the same payload as a plain pickle
        pickle.dump(_RunsCode(marker), fh, protocol=2)
    for f in (p, tmp_path / "evil.pkl"):
        with pytest.raises(ConfigError, match="expected a checkpoint") as e:
            torch_load(f, "a checkpoint")
        _one_line(e)
    assert not marker.exists()
