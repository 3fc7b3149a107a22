"""spec_from_node / kernel_inputs on a real quantized graph; the arrays decode to the op's weight."""

import numpy as np
import pytest
import torch
from torch import nn

from bitfold.codegen import KernelError, LinearKernelSpec, kernel_arg_names, kernel_inputs, spec_from_node
from bitfold.codegen.decode import decode_plan
from bitfold.codegen.inputs import kernel_inputs_from_tensors, layout_for
from bitfold.ir import formats, ops
from bitfold.passes.quantize_linears import ActivationPlan, QuantizeLinears, WeightPlan

from ..passes._helpers import capture
from ._helpers import random_layer


def _quantized_graph(fmt="int4", group=20, zero_point=True):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 24)).eval()
    x = torch.randn(3, 40)
    gm = capture(model, x)
    linear = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.linear.default)
    w = model[0].weight.detach()
    f = formats.get(fmt)
    amax = w.abs().view(24, -1, group).amax(-1) if group else w.abs().amax(1)
    zp = torch.full(amax.shape, 1.0) if zero_point else None
    shift = torch.randint(-2, 3, (40,), dtype=torch.int32)
    QuantizeLinears({linear.name: WeightPlan(fmt, amax / f.max, group, zp)},
                    {linear.args[0].name: ActivationPlan("e2m1", 0.5, shift=shift)}).run(gm)
    node = next(n for n in gm.graph.nodes if n.target == torch.ops.bitfold.quantized_linear.default)
    return gm, node


def _decoded_weight(spec, arrays):
    """Rebuild Ŵ from the kernel arrays: (u - z)·s' per element, via the layout."""
    plan = decode_plan(spec.weight_format)
    layout = layout_for(spec)
    names = kernel_arg_names(spec)[1:-1]
    named = dict(zip(names, arrays))
    u = layout.unpack(named["codes"]).astype(np.float64)
    if plan.kind == "byte_table":
        u = named["table"][:16][u.astype(int)].astype(np.float64)
    elif plan.kind == "float_table":
        u = named["table"][u.astype(int)].astype(np.float64)
    per_group = lambda a: a.transpose(0, 2, 1).reshape(layout.padded_out_features, layout.groups)[: spec.out_features]
    g = np.minimum(np.arange(spec.in_features) // layout.group, layout.groups - 1)
    if "zero_points" in named:
        u = u - per_group(named["zero_points"])[:, g]
    return u * per_group(named["scales"])[:, g]


def test_spec_and_inputs_from_a_quantized_graph():
    gm, node = _quantized_graph()
    spec = spec_from_node(node)
    assert spec == LinearKernelSpec("int4", 24, 40, 20, True, True, True)
    arrays = kernel_inputs(spec, node, gm)
    assert kernel_arg_names(spec) == ["x", "codes", "scales", "zero_points", "shift", "bias", "y"]
    assert [a.dtype for a in arrays] == [np.uint32, np.float32, np.uint8, np.float32, np.float32]
    packed, scale, zp = (getattr(gm, node.args[i].target) for i in (1, 5, 7))
    want = ops.unpack_weight(packed, "int4", 24, 40, scale, 20, zp).numpy()
    np.testing.assert_allclose(_decoded_weight(spec, arrays), want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    shift = getattr(gm, node.args[8].target).numpy()
    np.testing.assert_array_equal(arrays[3], np.ldexp(np.float32(1), -shift))


@pytest.mark.parametrize("fmt,group,zp", [("e2m1", None, False), ("nf4", 32, False), ("int3", 32, True),
                                          ("uint2", None, True), ("fp8_e4m3", None, False), ("mxfp4", None, False)])
def test_arrays_decode_to_the_ops_weight(fmt, group, zp):
    layer = random_layer(fmt, 37, 70, group, zp, seed=3)
    s = layer.spec
    want = ops.unpack_weight(layer.packed, fmt, s.out_features, s.in_features, layer.scale,
                             s.effective_group_size, layer.zero_point).numpy()
    np.testing.assert_allclose(_decoded_weight(s, layer.arrays()), want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_int8_activation_layout_pads_groups_to_whole_blocks():
    spec = LinearKernelSpec("int4", 8, 40, 20, False, False, False, int8_activations=True)
    layout = layout_for(spec)
    assert layout.words_per_group == 4  # 20 codes -> 3 words -> a whole 32-slot block
    with pytest.raises(KernelError, match="int8 activations need 2- or 4-bit integer levels.*nf4"):
        layout_for(LinearKernelSpec("nf4", 8, 40, None, False, False, False, int8_activations=True))


def test_bad_inputs_are_named():
    gm, node = _quantized_graph()
    spec = spec_from_node(node)
    with pytest.raises(KernelError, match=f"node {node.name}: its spec .* differs"):
        kernel_inputs(LinearKernelSpec("int4", 24, 40, None, True, True, True), node, gm)
    other = next(n for n in gm.graph.nodes if n.op == "placeholder")
    with pytest.raises(KernelError, match=f"node {other.name}: expected a call to bitfold::quantized_linear"):
        spec_from_node(other)
    layer = random_layer("int4", 8, 16, shift=True)
    with pytest.raises(KernelError, match=r"input shift exponents must lie in \[-126, 126\]"):
        kernel_inputs_from_tensors(layer.spec, layer.packed, layer.scale, None, layer.shift * 0 + 200, None)
    with pytest.raises(KernelError, match=r"weight scale of shape \(3,\) does not fit int4 8x16"):
        kernel_inputs_from_tensors(layer.spec, layer.packed, torch.ones(3), None, layer.shift, None)
    with pytest.raises(KernelError, match="spec says no bias"):
        kernel_inputs_from_tensors(layer.spec, layer.packed, layer.scale, None, layer.shift, torch.ones(8))
    layer = random_layer("uint4", 8, 16, zero_point=True)
    with pytest.raises(KernelError, match=r"zero points must lie in the format's code range, got .*\.\.20"):
        kernel_inputs_from_tensors(layer.spec, layer.packed, layer.scale, layer.zero_point * 0 + 20, None, None)
    with pytest.raises(KernelError, match="format nf4 takes no zero point"):
        LinearKernelSpec("nf4", 8, 16, None, True, False, False)
    with pytest.raises(KernelError, match="activation dtype 'bfloat16'"):
        LinearKernelSpec("int4", 8, 16, None, False, False, False, act_dtype="bfloat16")
