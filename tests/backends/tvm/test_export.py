"""An exported model runs in a fresh process that has TVM's runtime and nothing else of ours:
torch and bitfold are made unimportable there, so any hidden dependency fails loudly."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import tvm
from torch.export import Dim

from bitfold.backends.tvm import CompiledModel, compile
from bitfold.ir import from_torch

RUN_EXPORT = textwrap.dedent("""
    import json, sys
    sys.modules["torch"] = None      # `import torch` now raises ImportError
    sys.modules["bitfold"] = None
    import numpy as np
    import tvm
    from tvm import relax

    directory, inputs, output = sys.argv[1:4]
    meta = json.load(open(directory + "/model.json"))
    vm = relax.VirtualMachine(tvm.runtime.load_module(directory + "/model.so"), tvm.cpu())
    params = tvm.runtime.load_param_dict_from_file(directory + "/params.bin")
    x = tvm.runtime.tensor(np.load(inputs))
    y = vm["main"](x, *[params[f"p{i}"] for i in range(meta["num_params"])])
    np.save(output, y.numpy())
    loaded = [m for m in sys.modules if m.split(".")[0] in ("torch", "bitfold") and sys.modules[m] is not None]
    print(json.dumps({"frontend_modules": loaded}))
""")


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = torch.nn.Linear(64, 256), torch.nn.Linear(256, 32)  # > 4096 weights: params

    def forward(self, x):
        return self.down(torch.nn.functional.silu(self.up(x)))


@pytest.fixture(scope="module")
def compiled():
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(4, 64)
    gm = from_torch(model, (x,), dynamic_shapes=({0: Dim("batch", min=1, max=64)},))
    return model, compile(gm, "llvm")


def test_export_runs_in_a_process_without_torch_or_bitfold(compiled, tmp_path):
    model, cm = compiled
    directory = cm.export(tmp_path / "mlp")
    assert sorted(p.name for p in directory.iterdir()) == ["model.json", "model.so", "params.bin"]
    meta = json.loads((directory / "model.json").read_text())
    assert meta["num_params"] == 2 and meta["inputs"][0]["shape"] == ["x_dim0", 64]
    x = torch.randn(7, 64)  # a batch size the example did not have
    np.save(tmp_path / "x.npy", x.numpy())
    run = subprocess.run([sys.executable, "-c", RUN_EXPORT, str(directory), str(tmp_path / "x.npy"),
                          str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"frontend_modules": []}
    with torch.no_grad():
        want = model(x).numpy()
    got = np.load(tmp_path / "y.npy")
    np.testing.assert_array_equal(got, cm(x.numpy()))  # the same kernels give the same bits
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_load_round_trip_and_no_silent_overwrite(compiled, tmp_path):
    _, cm = compiled
    directory = cm.export(tmp_path / "mlp")
    loaded = CompiledModel.load(directory)
    x = np.random.default_rng(0).standard_normal((3, 64)).astype("float32")
    np.testing.assert_array_equal(loaded(x), cm(x))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        cm.export(directory)
    assert cm.export(directory, overwrite=True) == directory
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_loading_something_else_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a bitfold TVM export"):
        CompiledModel.load(tmp_path)


@pytest.mark.parametrize("target", ["llvm -mcpu=znver3 -num-cores=2 -mattr=+avx2,+fma", "cuda -arch=sm_90"])
def test_the_target_in_model_json_resolves_to_the_same_target(target):
    """model.json stores the target as JSON; list options (``keys``, ``mattr``) once came back
    as strings and ``CompiledModel.load`` raised a TargetError about 'keys'."""
    from bitfold.backends.tvm import resolve_target

    original = resolve_target(target)
    written = json.loads(json.dumps(CompiledModel(None, original, [], [], 1).signature()))["target"]
    assert written["keys"] == list(original.keys)
    assert resolve_target(written).export() == original.export()


@pytest.mark.skipif(tvm.cuda(0).exist, reason="a CUDA device is present: the CUDA export loads here")
def test_loading_a_cuda_export_without_a_gpu_says_so(tmp_path):
    """TVM's own error here was 'loader of that name is not registered'."""
    torch.manual_seed(0)
    gm = from_torch(MLP().eval(), (torch.randn(4, 64),))
    directory = compile(gm, "cuda -arch=sm_90").export(tmp_path / "mlp_cuda")  # no GPU needed to export
    with pytest.raises(RuntimeError, match="compiled for cuda .*needs a CUDA device"):
        CompiledModel.load(directory)
