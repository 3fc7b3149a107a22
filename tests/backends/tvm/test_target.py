"""Target strings users type → TVM 0.27 targets (which reject the command-line form)."""

import pytest
import tvm

from bitfold.backends.tvm.target import TargetError, resolve_target, target_dict


def test_plain_kinds():
    assert resolve_target("llvm").kind.name == "llvm"
    cuda = resolve_target("cuda -arch=sm_90")
    assert cuda.kind.name == "cuda" and str(cuda.attrs["arch"]) == "sm_90"


def test_command_line_options_become_a_dict():
    spec = target_dict("llvm -mcpu=znver3 -num-cores=2 -mattr=+avx2,+fma")
    assert spec == {"kind": "llvm", "mcpu": "znver3", "num-cores": 2, "mattr": ["+avx2", "+fma"]}
    target = resolve_target("llvm -mcpu=znver3 -num-cores=2")
    assert str(target.attrs["mcpu"]) == "znver3" and int(target.attrs["num-cores"]) == 2


def test_native_means_the_host_cpu():
    target = resolve_target("llvm -mcpu=native")
    assert str(target.attrs["mcpu"]) == tvm.target.codegen.llvm_get_system_cpu() != "native"


def test_json_dict_and_target_objects_pass_through():
    assert str(resolve_target('{"kind": "llvm", "mcpu": "znver3"}').attrs["mcpu"]) == "znver3"
    assert str(resolve_target({"kind": "llvm", "mcpu": "znver3"}).attrs["mcpu"]) == "znver3"
    target = tvm.target.Target({"kind": "llvm"})
    assert resolve_target(target) is target


@pytest.mark.parametrize("bad, match", [
    ("", "must start with a kind"),
    ("-mcpu=znver3", "must start with a kind"),
    ("llvm mcpu=znver3", "must look like -key=value"),
    ("opencl", "not supported"),
    ("llvm -no-such-option=3", "TVM rejected"),
])
def test_bad_targets_say_what_is_wrong(bad, match):
    with pytest.raises(TargetError, match=match):
        resolve_target(bad)
